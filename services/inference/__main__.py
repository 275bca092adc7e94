from services.common.server import run_service
from services.inference.server import register

run_service("inference", register)
