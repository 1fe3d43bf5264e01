"""`python -m localstore serve --host H --port P --data-dir D` (console script `layer-localstore`)."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="layer-localstore", description="Turbopuffer-compatible local store")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve the store over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--data-dir", default="./localstore-data")
    serve.add_argument("--enable-faults", action="store_true",
                       help="serve the test hooks /_localstore/faults and /_localstore/journal (need the store's key)")
    args = parser.parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    os.environ["LOCALSTORE_ENABLE_FAULTS"] = "1" if args.enable_faults else "0"
    os.environ["LOCALSTORE_DATA_DIR"] = os.path.abspath(args.data_dir)
    os.environ["LOCALSTORE_URL"] = f"http://{args.host}:{args.port}"
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian("localstore.app:app", address=args.host, port=args.port, interface=Interfaces.RSGI, workers=1,
            loop=Loops.uvloop, log_enabled=False).serve()


if __name__ == "__main__":
    main()
