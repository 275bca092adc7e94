"""`python -m services.export`: run the export service."""

from services.common.server import run_service
from services.export.server import register

run_service("export", register)
