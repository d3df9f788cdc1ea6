"""python -m jcnn.inspect <capability> [flags]: see jcnn/inspect/cli.py."""
import sys

from jcnn.inspect.cli import main

sys.exit(main())
