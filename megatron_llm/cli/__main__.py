import sys

from megatron_llm.cli import main

sys.exit(main())
