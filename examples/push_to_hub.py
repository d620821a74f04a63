"""Publish a saved model folder on the Hugging Face Hub: write its model card, then upload it.

    python examples/push_to_hub.py runs/demo you/my-scratch-gpt --license apache-2.0 --dry-run

The card's training data and perplexity default to what MODEL_DIR/metrics.json records (see
`hf_scratch_gpt.hub.card_fields_from_metrics`); --dataset / --perplexity with --eval-dataset override them.

Steps:
1. `write_model_card` renders `model_cards/<kind>.md` into MODEL_DIR/README.md (license, tags, datasets,
   base model, perplexity as model-index metadata, a usage snippet that loads REPO_ID) and validates it offline.
2. `push_to_hub(..., dry_run=True)` checks the folder (config, safetensors headers, code files with auto_map,
   tokenizer, card) and lists the files it would upload. Nothing leaves the machine.
3. NETWORK STEP: without --dry-run, `push_to_hub` creates the repo (and branch --revision) and uploads the files
   in one commit. It needs a token with write access: `hf auth login`, or HF_TOKEN in the environment.
"""

import argparse

from hf_scratch_gpt.hub import CARD_TEMPLATES, push_to_hub, write_model_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a folder written by save_pretrained, with its tokenizer")
    parser.add_argument("repo_id", help="you/model-name")
    parser.add_argument("--kind", choices=sorted(CARD_TEMPLATES), default="trained_from_scratch")
    parser.add_argument("--license", required=True)
    parser.add_argument("--dataset", action="append")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--perplexity", type=float, default=None)
    parser.add_argument("--eval-dataset", default=None)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dry-run", action="store_true", help="write the card and list the upload; send nothing")
    args = parser.parse_args()

    card = write_model_card(
        args.model_dir, args.kind, repo_id=args.repo_id, license=args.license, datasets=args.dataset,
        base_model=args.base_model, perplexity=args.perplexity, eval_dataset=args.eval_dataset,
    )
    print(f"model card: {card}")

    # ---- NETWORK STEP (skipped with --dry-run) -----------------------------------------------------------------
    plan = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run)
    print(("would upload" if args.dry_run else "uploaded") + f" to {args.repo_id}:")
    for name in plan.files:
        print(f"  {name}")
    if plan.skipped:
        print(f"left out: {plan.skipped}")
    if plan.commit_url:
        print(plan.commit_url)


if __name__ == "__main__":
    main()
