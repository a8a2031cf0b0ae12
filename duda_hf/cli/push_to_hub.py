"""Push an exported model folder (a run's student/ or teacher/) to the Hub, with a model card.

The model card (README.md) is rewritten for --repo_id from the run's eval_results.json (the folder's parent, or
--eval_results); it describes the run's student, so a run's teacher/ is pushed with --keep_card and a README.md of
your own. --keep_card pushes the folder's README.md as it is. Only safetensors exports are pushed, and a
failed push leaves the local folder as it was.

Example (`duda-push` is the same as `python scripts/push_to_hub.py` in a clone):
    duda-push --model_dir outputs/gta2cs/student --repo_id my-org/duda-mitb0-gta2cs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from duda_hf.cli.errors import program
from duda_hf.evaluation.results_file import read_results
from duda_hf.export.hub import HubError, check_export, push_folder
from duda_hf.export.model_card import build_model_card, card_files


@program
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="exported model folder (config.json, model.safetensors, ...)")
    parser.add_argument("--repo_id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--eval_results", default=None, help="eval_results.json for the card (default: MODEL_DIR/../eval_results.json)")
    parser.add_argument("--license", default="other", help="license in the card metadata")
    parser.add_argument("--keep_card", action="store_true", help="push the existing README.md unchanged")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    card_path = model_dir / "README.md"
    previous_card = card_path.read_bytes() if card_path.exists() else None
    try:
        check_export(model_dir)
        results_path = Path(args.eval_results) if args.eval_results else model_dir.parent / "eval_results.json"
        if not (args.keep_card and card_path.exists()):
            if model_dir.resolve().name == "teacher":
                raise HubError(
                    f"'{model_dir}' is a run's teacher, and the model card written from eval_results.json describes the "
                    "run's student: push the student/ folder, or write teacher/README.md yourself and pass --keep_card"
                )
            if not results_path.is_file():
                raise HubError(f"no eval_results.json at '{results_path}' to write the model card from; pass --eval_results")
            config = (
                json.loads((model_dir / "preprocessor_config.json").read_text())
                if (model_dir / "preprocessor_config.json").exists()
                else {}
            )
            size = config.get("size") or {}
            eval_size_hw = (size["height"], size["width"]) if "width" in size else None
            model_config = json.loads((model_dir / "config.json").read_text())
            architecture = (model_config.get("architectures") or ["SegformerForSemanticSegmentation"])[0]
            card = build_model_card(
                read_results(results_path),  # either schema; a duda-evaluate report is refused
                args.repo_id,
                license=args.license,
                eval_size_hw=eval_size_hw,
                architecture=architecture,
                **card_files(model_dir),
            )
            card.save(card_path)
        url = push_folder(model_dir, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message)
    except HubError:
        if previous_card is not None:  # leave the folder as it was
            card_path.write_bytes(previous_card)
        elif card_path.exists():
            card_path.unlink()
        raise
    print(f"pushed {model_dir} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
