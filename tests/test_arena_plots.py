"""The arena's plots: file names that never collide, every model visible, legends that never
cover the data or squeeze the axes."""


def test_plot_names_never_collide():
    from rnnlab.arena.report import plot_name
    taken = set()
    names = []
    for label in ["parity", "mod_arith(p=3)", "mod_arith[p=3]", "mod_arith(p=3)x"]:
        names.append(plot_name(label, taken))
        taken.add(names[-1])
    assert names[0] == "parity" and names[1] == "mod_arith_p_3_"
    assert len(set(names)) == len(names)


def test_every_model_stays_visible_in_the_length_plot():
    """Seven models, four with equal scores at every length (as in the quick preset): each has
    its own marker and its own x positions, and the legend lies outside the axes."""
    import matplotlib.pyplot as plt

    from rnnlab.arena.report import figure

    lengths = [40, 64, 128, 256]
    rows = [[f"m{i}", *([1.0] * 4 if i < 4 else [0.1 * i] * 4)] for i in range(7)]
    fig = figure("parity", "scaled_accuracy", lengths, rows)
    try:
        ax = fig.axes[0]
        lines = [ln for ln in ax.get_lines() if ln.get_label() in {r[0] for r in rows}]
        assert len(lines) == 7 and len({ln.get_marker() for ln in lines}) == 7
        firsts = [ln.get_xdata()[0] for ln in lines]
        assert len(set(firsts)) == 7 and all(abs(x / 40 - 1) < 0.15 for x in firsts)
        fig.canvas.draw()
        legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= axes.x1  # right of the data, never over it
    finally:
        plt.close(fig)


def test_long_model_specs_put_the_legend_below_the_axes_not_over_or_beside_them():
    """Specs like the UT's controls would squeeze the axes to a sliver beside the legend: the
    legend goes below them and the axes keep most of the figure's width (both kinds of plot)."""
    import matplotlib.pyplot as plt

    from rnnlab.arena.report import curve_figure, figure

    long = "ut(tied=false,act=false,max_steps=2,position_offset=800,restart_at=11,rotary=false)"
    curves = [{"model": m, "task": "identity", "seed": 0, "metric": "accuracy",
               "curve": [[100, 2.0, 0.1], [200, 1.0, 0.9]]} for m in (long, "lstm")]
    for fig in (figure("identity", "accuracy", [81, 201], [[long, 1.0, 0.9], ["lstm", 0.5, 0.2]]),
                curve_figure("identity", "accuracy", curves, 0.99)):
        try:
            ax = fig.axes[0]
            fig.canvas.draw()
            legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
            assert legend.y1 <= axes.y0  # below the data, never over it
            assert axes.width > 0.7 * fig.bbox.width
            assert {t.get_text() for t in ax.get_legend().get_texts()} == {long, "lstm"}
        finally:
            plt.close(fig)
