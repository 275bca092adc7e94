from services.common.server import run_service
from services.train.server import register

run_service("train", register)
