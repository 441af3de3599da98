"""python -m tuner.schemas [docs/json.md]: regenerate the JSON docs from the schema files."""
import os
import sys

from . import write_docs

target = sys.argv[1] if len(sys.argv) > 1 else os.path.join("docs", "json.md")
write_docs(target)
print(target)
