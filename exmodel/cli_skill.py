"""``exmodel skill``: a population of LLL agents learning SKILL-mini in parallel and sharing every task
(serial in this process, or one Ray actor per agent). Thin: parses, calls :mod:`exmodel.skill`, shows."""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from pathlib import Path
from typing import Optional

import typer

from exmodel.cli import _state, app, out_console
from exmodel.errors import ConfigError
from exmodel.text import printable


def _kills(spec: list[str]) -> dict[int, int]:
    out = {}
    for item in spec:
        agent, _, after = item.partition(":")
        if not (agent.isdigit() and after.isdigit()):
            raise ConfigError(f"--kill expects AGENT:TASKS (kill agent AGENT during its task number TASKS + 1), got {item!r}")
        out[int(agent)] = int(after)
    return out


class LiveView:
    """Per agent: what it learns now, what it has learned, what it has received (rich, redrawn live)."""

    def __init__(self, n: int) -> None:
        self.rows = {a: {"learning": "", "learned": [], "received": 0, "state": "starting"} for a in range(n)}
        self.started = time.perf_counter()

    def event(self, e: dict) -> None:
        row = self.rows[e["agent"]]
        if e["kind"] == "started":
            row["state"] = f"learning {e['name']}"
            return
        if e["kind"] == "lost":
            row["state"] = f"lost during {e['name']}"
            return
        row["state"] = "idle"
        row["learned"].append(e["name"])
        for a, other in self.rows.items():
            if a != e["agent"] and not other["state"].startswith("lost"):
                other["received"] += 1

    def __rich__(self):
        from rich.table import Table

        table = Table("agent", "state", "learned", "bundles received",
                      title=f"SKILL: {time.perf_counter() - self.started:.0f} s")
        for a, r in self.rows.items():
            table.add_row(str(a), r["state"], ", ".join(r["learned"][-4:]) + (" …" if len(r["learned"]) > 4 else "")
                          + f" ({len(r['learned'])})", str(r["received"]))
        return table


@app.command("skill")
def skill(config: Optional[Path] = typer.Argument(None, help="YAML config (default: the tiny SKILL-mini)."),
          agents: Optional[int] = typer.Option(None, "--agents", help="Number of agents (overrides the config)."),
          backend: Optional[str] = typer.Option(None, "--backend", help="serial (this process) or ray (one actor per agent)."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray: join this cluster (e.g. auto)."),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with MNIST and Fashion-MNIST."),
          out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<config>-<timestamp>); "
                                             "reuse it to resume from the bundles it holds."),
          overrides: list[str] = typer.Option([], "--set", help="Override a config key: key=value (dotted path)."),
          cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache (default "
                                                   "$EXMODEL_CACHE_DIR or ~/.cache/exmodel)."),
          kill: list[str] = typer.Option([], "--kill", help="Chaos drill: AGENT:TASKS kills that agent during its "
                                         "task number TASKS + 1."),
          ) -> None:
    """Agents learn their tasks in parallel and share each one with all others; all then answer every task."""
    from rich.live import Live

    from exmodel.config import load_config
    from exmodel.experts.zoo import default_cache_dir
    from exmodel.fileio import atomic_write_text
    from exmodel.reporting.skill_plots import plot_mapper, plot_timeline
    from exmodel.skill.config import SkillConfig
    from exmodel.skill.costs import corrective_markdown, table2_markdown
    from exmodel.skill.protocol import run_skill

    sets = list(overrides) + [f"agents={agents}"] * (agents is not None) + [f"backend={backend}"] * (backend is not None) \
        + [f"address={address}"] * (address is not None)
    cfg = load_config(config, sets, default={"name": "skill_tiny", "benchmark": {"size": "tiny"}}, model=SkillConfig)
    kills = _kills(kill)
    out = out or Path("runs") / f"{cfg.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    view = LiveView(cfg.agents)
    live = contextlib.nullcontext() if _state["quiet"] else Live(view, console=out_console, refresh_per_second=2,
                                                                   transient=True)
    with live:
        results = run_skill(cfg, out, data_dir, cache_dir or default_cache_dir(), log=lambda s: out_console.print(printable(s)),
                            on_event=view.event, kill=kills)
    atomic_write_text(out / "table.md", table2_markdown(results["costs"]) + corrective_markdown(results["accuracy"]))
    plot_timeline(results, out / "timeline.png")
    plot_mapper(results, out / "mapper.png")
    secs = results["seconds"]
    for m, r in results["accuracy"].items():
        mapper = sum(r["mapper_acc"]) / len(r["mapper_acc"])
        out_console.print(f"{m}: average accuracy without a task label {r['average'] * 100:.2f} %, task mapper "
                          f"{mapper * 100:.2f} %; agents identical: {'yes' if results['identical'][m] else 'NO'}")
        for t, acc in r.get("corrective", {}).items():
            out_console.print(f"  counting class names ≥ {t} similar as right: {acc * 100:.2f} %")
    c = results["costs"]
    out_console.print(f"{cfg.agents} agent(s) on {results['backend']}: learning and sharing {secs['learning_and_sharing']:.1f} s "
                      f"(start-up {secs['startup']:.1f} s); MAC speedup {c['speedup'] or 0:.2f}, efficiency "
                      f"{c['efficiency'] or 0:.3f} N; {c['bytes_per_task']['mean'] / 1e3:.1f} kB per task")
    if results["lost_tasks"]:
        out_console.print(f"lost tasks: {', '.join(results['lost_tasks'])}")
    out_console.print(f"results: {printable(str(out))}/results.json  table: table.md  plots: timeline.png mapper.png  "
                      "bundles: bundles/")
