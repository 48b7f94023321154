"""`dsv3 info-cpu`: CPU features, the kernel path in use, threads and oneDNN (dsv3.cpu_info())."""
import json


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    from .cpu import cpu_info
    info = cpu_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    feats = ", ".join(k for k, v in info["features"].items() if v)
    print(f"kernel path : {info['isa']} (supported: {', '.join(info['supported_isas'])})")
    print(f"threads     : {info['num_threads']}")
    print(f"oneDNN      : {info.get('onednn') or 'unavailable: ' + str(info.get('onednn_error'))}")
    print(f"features    : {feats}")
    return 0
