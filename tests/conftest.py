import sys
from pathlib import Path

# deploy.py and roles/ are imported from the checkout, as pyinfra does from its cwd.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
