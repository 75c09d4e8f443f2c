"""What loading the tokenizer costs ce-run: `tokenizers` alone (TokenizerFile) against transformers' AutoTokenizer.

Each way is a fresh interpreter timed from outside (imports count: they are what a user waits for), loading the
same saved tokenizer and encoding the same documents the harness's way; best of --rounds. Writes JSON with the
machine, versions and command.
Usage: python bench/tokenizer_load.py --tokenizer DIR --dataset hellaswag_val.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

WAYS = {
    "tokenizers": "from cetrt.workload.tokens import TokenizerFile as load",
    "transformers": "from transformers import AutoTokenizer; load = AutoTokenizer.from_pretrained",
}
BODY = """
import sys
from pathlib import Path
{load}
from cetrt.workload.hellaswag import load_docs
from cetrt.workload.tokens import _encode
_encode(load(Path(sys.argv[1])), load_docs(sys.argv[2], int(sys.argv[3])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--items", type=int, default=10042)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    seconds = {}
    for name, load in WAYS.items():
        runs = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", BODY.format(load=load), str(args.tokenizer), args.dataset,
                            str(args.items)], check=True)
            runs.append(round(time.perf_counter() - start, 3))
        seconds[name] = {"runs_s": runs, "best_s": min(runs)}
    import tokenizers
    import transformers

    result = {"benchmark": "a fresh interpreter loading the tokenizer and encoding the items the harness's way",
              "items": args.items, "tokenizer": str(args.tokenizer), "seconds": seconds,
              "transformers_over_tokenizers": round(seconds["transformers"]["best_s"] / seconds["tokenizers"]["best_s"], 2),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                          "tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                          "load_average_after": os.getloadavg(), "cores": os.cpu_count()},
              "command": " ".join(sys.argv)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"]), result["transformers_over_tokenizers"])


if __name__ == "__main__":
    main()
