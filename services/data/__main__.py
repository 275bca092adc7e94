from services.common.server import run_service
from services.data.server import register
from services.common.dataset.validate import clean_stale_scratch

clean_stale_scratch()  # scratch folders in TMPDIR that a killed data service left behind
run_service("data", register)
