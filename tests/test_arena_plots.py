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
    deep = [{**curves[0], "act_depth": [[100, 2.5], [200, 1.5]]}, curves[1]]
    for fig in (figure("identity", "accuracy", [81, 201], [[long, 1.0, 0.9], ["lstm", 0.5, 0.2]]),
                curve_figure("identity", "accuracy", curves, 0.99),
                curve_figure("identity", "accuracy", deep, 0.99)):
        try:
            fig.canvas.draw()
            (legend,) = fig.legends
            box = legend.get_window_extent()
            assert all(box.y1 <= ax.get_window_extent().y0 for ax in fig.axes)  # below all
            assert all(ax.get_window_extent().width > 0.7 * fig.bbox.width for ax in fig.axes)
            assert {t.get_text() for t in legend.get_texts()} == {long, "lstm"}
        finally:
            plt.close(fig)


def test_curves_with_act_depth_draw_it_below_the_metric_one_line_per_run():
    """The depth panel holds a line per run that recorded one (the GRU has none), in the
    colour of its run's metric line, and short labels keep the legend beside the axes."""
    import matplotlib.pyplot as plt

    from rnnlab.arena.report import curve_figure
    curves = [{"model": m, "task": "parity", "seed": s, "metric": "accuracy",
               "curve": [[100, 2.0, 0.5], [200, 1.0, 0.9]],
               **({"act_depth": [[100, 3.0 - s], [200, 1.0]]} if m == "ut" else {})}
              for m, s in (("gru", 0), ("ut", 0), ("ut", 1))]
    fig = curve_figure("parity", "accuracy", curves, None)
    try:
        top, low = fig.axes
        assert len(top.lines) == 3 and len(low.lines) == 2
        assert [list(line.get_ydata()) for line in low.lines] == [[3.0, 1.0], [2.0, 1.0]]
        assert {line.get_color() for line in low.lines} == {top.lines[1].get_color()}
        assert low.get_ylabel() == "ACT depth (mean steps)" and top.get_legend() is not None
    finally:
        plt.close(fig)
    assert len(curve_figure("parity", "accuracy", curves[:1], None).axes) == 1  # no depth
    plt.close("all")


def _grid_records():
    """Model a on tasks long (tested beyond training, with an extra metric) and short (tested
    only at its train length); model b on long only."""
    recs = [dict(model=m, task=t, metric="accuracy", seed=s, length=n, value=v + 0.1 * s)
            for m, t, vals in (("a", "long", {10: 0.9, 20: 0.5, 40: 0.3}),
                               ("a", "short", {10: 0.6}), ("b", "long", {10: 0.2, 20: 0.1}))
            for s in (0, 1) for n, v in vals.items()]
    return recs + [{**r, "metric": "sequence_accuracy", "value": 0.0} for r in recs[:3]]


def test_the_overview_is_the_tables_fit_and_beyond_with_missing_runs_left_empty():
    """Each cell is the task's own metric (not an extra one) from the report's tables: the value
    at the train length and the mean beyond it, None where a run is missing or a task is tested
    only at its train length; a model with no run at all is left out."""
    import matplotlib.pyplot as plt
    from pytest import approx

    from rnnlab.arena import report
    from rnnlab.arena.config import ArenaConfig
    from rnnlab.arena.overview import overview, overview_figure

    cfg = ArenaConfig(models=["c", "b", "a"], tasks=["long", "short"])
    models, tasks, fit, beyond = overview(cfg.models, report.task_tables(cfg, _grid_records()))
    assert models == ["b", "a"] and tasks == ["long", "short"]
    assert fit == [[approx(0.25), None], [approx(0.95), approx(0.65)]]  # means of two seeds
    assert beyond == [[approx(0.15), None], [approx(0.45), None]]
    fig = overview_figure(models, tasks, fit, beyond)
    try:
        top, bottom = (ax for ax in fig.axes if ax.images)
        assert [t.get_text() for t in top.texts] == ["0.25", "0.95", "0.65"]
        assert [t.get_text() for t in bottom.texts] == ["0.15", "0.45"]
        assert top.images[0].get_array().mask.tolist() == [[False, True], [False, False]]
        assert [t.get_text() for t in bottom.get_xticklabels()] == tasks
        assert [t.get_text() for t in top.get_yticklabels()] == models
    finally:
        plt.close(fig)


def test_the_report_shows_the_overview_for_two_or_more_tasks_only(tmp_path):
    from rnnlab.arena import report
    from rnnlab.arena.config import ArenaConfig

    recs = _grid_records()
    report.write_all(tmp_path / "two", ArenaConfig(models=["a", "b"], tasks=["long", "short"]),
                     recs)
    assert (tmp_path / "two" / "plots" / "overview.png").stat().st_size > 0
    assert "Overview: 2 models × 2 tasks" in (tmp_path / "two" / "report.html").read_text()
    one = [r for r in recs if r["task"] == "long"]
    report.write_all(tmp_path / "one", ArenaConfig(models=["a", "b"], tasks=["long"]), one)
    assert not (tmp_path / "one" / "plots" / "overview.png").exists()
    assert (tmp_path / "one" / "plots" / "long.png").exists()


def test_the_report_renders_again_only_the_plots_whose_data_changed(tmp_path, monkeypatch):
    """The arena rewrites the report after every run: a plot whose table did not change is not
    drawn again, and the files are the same bytes as a fresh render."""
    from rnnlab.arena import report
    from rnnlab.arena.config import ArenaConfig

    drawn = []
    for name in ("figure", "overview_figure"):
        def counted(*args, _draw=getattr(report, name), _name=name):
            drawn.append((_name, args[0] if _name == "figure" else "all"))
            return _draw(*args)
        monkeypatch.setattr(report, name, counted)
    monkeypatch.setattr(report, "_RENDERED", {})
    cfg = ArenaConfig(models=["a", "b", "c"], tasks=["long", "short"])
    recs = _grid_records()
    report.write_all(tmp_path / "r", cfg, recs)
    assert sorted(drawn) == [("figure", "long"), ("figure", "long"), ("figure", "short"),
                             ("overview_figure", "all")]  # long: its extra metric's plot too
    drawn.clear()
    report.write_all(tmp_path / "r", cfg, recs)
    assert drawn == []
    more = recs + [dict(model="c", task="short", metric="accuracy", seed=0, length=10,
                        value=0.7)]
    report.write_all(tmp_path / "r", cfg, more)
    assert sorted(drawn) == [("figure", "short"), ("overview_figure", "all")]
    monkeypatch.setattr(report, "_RENDERED", {})
    report.write_all(tmp_path / "fresh", cfg, more)
    for name in ("long.png", "short.png", "overview.png"):
        assert (tmp_path / "r" / "plots" / name).read_bytes() == \
            (tmp_path / "fresh" / "plots" / name).read_bytes()
