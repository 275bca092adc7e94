"""`python -m services.eval`: run the evaluation service."""

from services.common.server import run_service
from services.eval.server import register

run_service("eval", register)
