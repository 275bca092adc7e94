from services.common.server import run_service
from services.data.server import register

run_service("data", register)
