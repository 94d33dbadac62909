"""Run UI-format workflows (the JSON users share) headless through ComfyUI's own executor, in-process.

Usage: python .ci/run_workflow.py --comfyui DIR [--out DIR] WORKFLOW.json [...]
The pack is linked into ComfyUI's custom_nodes/ as ComfyUI-CoME; outputs are written to --out.
The UI-to-API conversion follows the frontend's rule: a node's widget values are stored in the
order of its widget inputs, whether or not a widget is also driven by a link.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-CoME"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# nodes that live only in the frontend: its graphToPrompt leaves them out of the prompt
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def is_widget(spec: tuple) -> bool:
    """Whether an INPUT_TYPES entry is shown as a widget (and so stored in ``widgets_values``)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """API-format prompt {id: {class_type, inputs}} for a UI-format workflow, given ComfyUI's node classes."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:
            continue
        kind = node["type"]
        if kind not in node_classes:
            raise ValueError(f"workflow: node {node['id']} has type {kind}, which no loaded pack defines.")
        spec = node_classes[kind].INPUT_TYPES()
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        for name, entry in [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]:
            if is_widget(entry) and values:
                inputs[name] = values.pop(0)
                if (entry[1] if len(entry) > 1 else {}).get("control_after_generate"):
                    values.pop(0)
        for socket in node.get("inputs", []):
            link = links.get(socket.get("link"))
            if link is not None:
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


def start_comfyui(comfy: Path, out: Path) -> None:
    """Import ComfyUI in-process with CPU settings, only this pack as custom nodes, and ``out`` as output folder."""
    link = comfy / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(PACK, target_is_directory=True)
    sys.argv = [sys.argv[0], "--cpu", "--disable-metadata", "--output-directory", str(out),
                "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME,
                "--database-url", "sqlite:///:memory:"]
    sys.path.insert(0, str(comfy))
    os.chdir(comfy)
    import comfy.options
    comfy.options.enable_args_parsing()
    import utils.extra_config  # noqa: F401  must precede `nodes`, which puts comfy/ first on sys.path
    import folder_paths
    from app.logger import setup_logger
    setup_logger(log_level="INFO")
    folder_paths.set_output_directory(str(out))


async def run(workflows: list[Path]) -> int:
    """Execute each workflow; 0 when all succeed."""
    import execution
    import nodes
    import server
    srv = server.PromptServer(asyncio.get_running_loop())
    await nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False)
    executor = execution.PromptExecutor(srv, cache_type=execution.CacheType.CLASSIC)
    failed = 0
    for path in workflows:
        prompt = ui_to_api(json.loads(path.read_text()), nodes.NODE_CLASS_MAPPINGS)
        pid = str(uuid.uuid4())
        valid, err, outputs, node_errors = await execution.validate_prompt(pid, prompt, None)
        if not valid:
            print(f"[FAIL] {path.name}: invalid: {err['message']} {json.dumps(node_errors)}")
            failed += 1
            continue
        await executor.execute_async(prompt, pid, {}, outputs)
        if executor.success:
            files = [f"{i.get('subfolder', '')}/{i['filename']}".lstrip("/")
                     for out in executor.history_result["outputs"].values()
                     for items in out.values() if isinstance(items, list)
                     for i in items if isinstance(i, dict) and i.get("type") == "output"]
            print(f"[ OK ] {path.name}: wrote {', '.join(files) or 'nothing'}")
        else:
            error = next((d for ev, d in executor.status_messages if ev == "execution_error"), {})
            print(f"[FAIL] {path.name}: node {error.get('node_id')} ({error.get('node_type')}): "
                  f"{error.get('exception_message', '').strip()}")
            failed += 1
    return 1 if failed else 0


def main() -> int:
    """Parse arguments and run the workflows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI folder (with main.py)")
    parser.add_argument("--out", type=Path, default=PACK / "out", help="output folder")
    parser.add_argument("workflows", type=Path, nargs="+", help="UI-format workflow files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workflows = [p.resolve() for p in args.workflows]
    start_comfyui(args.comfyui.resolve(), args.out.resolve())
    return asyncio.run(run(workflows))


if __name__ == "__main__":
    sys.exit(main())
