"""``archsearch space check SPACE [--study STUDY] [--proxy key=value ...] [--n 1000] [--json]``: whether the
proxy sees every searched parameter (see :mod:`archsearch.space_check`). Exit status 0: no blind
parameter; 1: some; 2: bad input."""
from __future__ import annotations

import json


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    sub.required = True
    c = sub.add_parser("check", help="searched parameters the proxy cannot see, and invalid-sample shares",
                       description="For every searched parameter: does changing it alone change the proxy model? "
                                   "Exit 0 when none is blind, 1 when some are, 2 on bad input.")
    c.add_argument("space", help="a search-space YAML, e.g. search_spaces/unet.yaml")
    c.add_argument("--study", help="take the proxy settings from this study's proxy: section (then --proxy on top)")
    c.add_argument("--proxy", nargs="+", default=[], metavar="key=value",
                   help="proxy settings (snapgen.proxy.ProxyConfig fields; the decoder proxy's for decoder spaces), "
                        "e.g. width_mult=0.25 depth_mult=0.5")
    c.add_argument("--n", type=int, default=1000, help="random samples for the invalid shares (default 1000)")
    c.add_argument("--points", type=int, default=4, help="random valid points to vary each parameter from, beside "
                   "the base (default 4)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from snapgen.errors import UserError

    from archsearch.space import SearchSpace
    from archsearch.space_check import Proxy, check, load_proxy_mapping, print_check, proxy_config

    for name in ("n", "points"):
        if getattr(args, name) < 0:
            raise UserError(f"must be >= 0, got {getattr(args, name)}", file="<command line>", key=f"--{name}")
    space = SearchSpace.load(args.space)
    cfg = proxy_config(space.kind, load_proxy_mapping(args.study, args.proxy), file="<command line>")
    rep = check(space, Proxy(space.kind, cfg), n=args.n, points=args.points, seed=args.seed)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print_check(rep)
    return 1 if rep["blind"] else 0
