"""`stacklens explain`: one nested timeline for a request or a VM, API call to kernel threads."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.tree import Tree

from stacklens.errors import StacklensError
from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts

LAYER_COLOUR = {"app": "cyan", "virt": "magenta", "kernel": "yellow", "net": "green", "storage": "blue"}


def render_tree(root) -> Tree:
    """A rich Tree: offsets from the root's start, durations, host, layer colour."""
    base = root.start

    def label(n) -> str:
        when = ""
        if n.start is not None and base is not None:
            when = f"+{fmt_duration(n.start - base)}"
            if n.end is not None and n.end != n.start:
                when += f" ({fmt_duration(n.end - n.start)})"
        colour = LAYER_COLOUR.get(n.layer, "white")
        host = f" [dim]@{escape(n.host)}[/]" if n.host else ""
        return f"[{colour}]{escape(n.label)}[/]{host} [dim]{when}[/]"

    tree = Tree(label(root) + f" [dim]{fmt_ts(root.start)}[/]")

    def add(t: Tree, n) -> None:
        for c in n.children:
            add(t.add(label(c)), c)

    add(tree, root)
    return tree


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, ClusterOpt, JsonOpt

    @app.command()
    def explain(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
                request: Optional[str] = typer.Option(None, "--request", help="Request id."),
                vm: Optional[str] = typer.Option(None, "--vm", help="VM name (QEMU/Nova) or instance uuid."),
                cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """One nested timeline from the API call down to kernel threads (--request or --vm)."""
        from stacklens.analyses.explain import explain_request, explain_vm
        from stacklens.store import Store
        if bool(request) == bool(vm):
            raise StacklensError("explain: give exactly one of --request ID or --vm NAME")
        s = Store(store)
        # on a cluster: its migrations' kernel part, one task per source host
        root = explain_request(s, request, cluster) if request else explain_vm(s, vm, cluster=cluster)
        if json_out:
            emit_json(root.to_dict())
        else:
            console.print(render_tree(root))
