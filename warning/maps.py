"""Maps for people: flood depth over a hillshade, with the zones drawn and coloured by level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LightSource  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from rasterio.warp import transform as warp_transform  # noqa: E402

from .site import Site  # noqa: E402


def peak_depth_map(site: Site, depth: np.ndarray, path: Path, *, title: str,
                   zone_colours: dict[str, str], zone_levels: dict[str, str]) -> Path:
    """Write a PNG of ``depth`` (m) over the site's hillshade; zones outlined in their
    highest level's colour (grey when they never warned)."""
    t = site.terrain
    extent = (site.transform.c, site.transform.c + site.nx * site.transform.a,
              site.transform.f + site.ny * site.transform.e, site.transform.f)
    hs = LightSource(azdeg=315, altdeg=45).hillshade(
        np.nan_to_num(site.dem, nan=float(np.nanmin(site.dem))), vert_exag=3, dx=site.dx, dy=site.dy)
    fig, ax = plt.subplots(figsize=(8.5, 7.5), dpi=110)
    ax.imshow(hs, cmap="gray", extent=extent, vmin=0, vmax=1)
    shown = np.where(depth >= 0.05, depth, np.nan)
    im = ax.imshow(shown, cmap="Blues", extent=extent, vmin=0,
                   vmax=max(1.0, float(np.nanpercentile(depth, 99.5)) if np.isfinite(depth).any() else 1.0),
                   alpha=0.85)
    ax.imshow(np.where(t.drainage, 1.0, np.nan), cmap="winter", extent=extent, alpha=0.6)
    handles = []
    for zone in site.zones:
        colour = zone_colours.get(zone.code, "#666666")
        for ring in zone.polygons:
            lats, lons = zip(*ring)
            xs, ys = warp_transform("EPSG:4326", site.crs, list(lons), list(lats))
            ax.plot(xs, ys, color=colour, lw=2.2)
            ax.text(np.mean(xs[:-1]), max(ys) + 40, zone.name, ha="center", va="bottom",
                    fontsize=8, color="black",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, alpha=0.85))
        handles.append(Patch(fc="none", ec=colour, lw=2,
                             label=f"{zone.name}: {zone_levels.get(zone.code, 'no warning')}"))
    for g in site.gauges.values():
        x, y = site.transform @ (g.col + 0.5, g.row + 0.5)
        ax.plot(x, y, "v", color="crimson", ms=7, mec="white")
        ax.text(x + 60, y, g.id, fontsize=7, color="crimson")
    cb = fig.colorbar(im, ax=ax, shrink=0.7)
    cb.set_label("peak flood depth (m)")
    ax.legend(handles=handles, loc="lower left", fontsize=7, title="highest level reached",
              title_fontsize=7, framealpha=0.9)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"easting (m, {site.crs.to_string()})")
    ax.set_ylabel("northing (m)")
    ax.ticklabel_format(style="plain", useOffset=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
