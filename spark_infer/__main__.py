import sys

from spark_infer.cli import main

sys.exit(main())
