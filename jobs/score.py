"""spark-submit entry point: `spark-submit jobs/score.py --config job.yaml [overrides]`.

Same flags as `spark-infer score`. Delta is added automatically when the cluster lacks it
(see docs/operations.md, "Delta Lake under spark-submit").
"""

import sys

from spark_infer.cli import run_score

if __name__ == "__main__":
    sys.exit(run_score(sys.argv[1:]))
