"""PNG plots of recorded results. matplotlib is imported lazily (``pip install dhsa[plot]``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'dhsa[plot]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    records: list[dict],
    *,
    x: str,
    panels: list[tuple[str, str]],
    group: str,
    path: str | Path,
    title: str = "",
    log_x: bool = True,
    log_y: bool = False,
) -> Path:
    """One panel per ``(field, label)`` of ``panels``: ``field`` over ``x``, a line per ``group``.

    Records missing a panel's field (or holding None there) are left out of that panel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (field, label) in zip(axes[0], panels, strict=False):
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for record in records:
            if record.get(field) is not None and record.get(x) is not None:
                lines[str(record[group])].append((record[x], record[field]))
        for name, points in sorted(lines.items()):
            points.sort()
            color, style = _line_style(name, sorted(lines))
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=name,
                color=color,
                linestyle=style,
            )
        if log_x:
            ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


_STYLES = ("-", "--", ":", "-.")


def _line_style(name: str, names: list[str]) -> tuple[str, str]:
    """Colour by the part of ``name`` before ``@`` (the method), line style by the part after it
    (the budget), so that many series stay apart."""
    bases = sorted({n.split("@")[0] for n in names})
    suffixes = sorted({n.partition("@")[2] for n in names}, key=lambda v: (len(v), v))
    base, _, suffix = name.partition("@")
    color = f"C{bases.index(base) % 10}"
    return color, _STYLES[suffixes.index(suffix) % len(_STYLES)]


def plot_heatmap(
    records: list[dict],
    *,
    x: str,
    y: str,
    value: str,
    path: str | Path,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """A grid of ``value`` over the distinct ``x`` (columns) and ``y`` (rows), each cell annotated.

    Cells no record covers stay blank (white). Used for needle-in-a-haystack length x depth maps.
    """
    plt = _pyplot()
    xs = sorted({r[x] for r in records})
    ys = sorted({r[y] for r in records})
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in records:
        grid[ys.index(r[y])][xs.index(r[x])] = r[value]
    fig, ax = plt.subplots(figsize=(1.1 * len(xs) + 2.5, 0.5 * len(ys) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    for i, row in enumerate(grid):
        for j, cell in enumerate(row):
            if cell == cell:
                ax.text(j, i, f"{cell:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(image, ax=ax, label=value)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    """Lay out, write ``fig`` as PNG at ``path`` (folders made as needed) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
