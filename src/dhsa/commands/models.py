"""``dhsa models list`` and ``dhsa models fetch KEY``: the pretrained models known to dhsa."""

from __future__ import annotations

from ..cli import CommandError
from ..models import MODEL_SPECS, FetchError, fetch_model, model_path


def run_list(args) -> int:
    for key, spec in MODEL_SPECS.items():
        path = model_path(key, args.dir)
        state = f"fetched: {path}" if path.exists() else "not fetched"
        print(f"{key:10s} {spec.description}\n{'':10s} {state}")
    return 0


def run_fetch(args) -> int:
    try:
        path = fetch_model(args.key, args.dir, force=args.force, progress=not args.quiet)
    except FetchError as error:
        raise CommandError(str(error)) from error
    print(path)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list or fetch the known pretrained models")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    dir_help = "models folder (default $DHSA_MODELS_DIR or ~/.cache/dhsa/models)"
    listing = sub.add_parser("list", help="known models and whether they are fetched")
    listing.add_argument("--dir", help=dir_help)
    listing.set_defaults(run=run_list)
    fetch = sub.add_parser("fetch", help="download, assemble and verify a model's GGUF file")
    fetch.add_argument("key", choices=sorted(MODEL_SPECS))
    fetch.add_argument("--dir", help=dir_help)
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(run=run_fetch, hard_stop=False)
