"""``python -m services.ingestor``: the ingestor alone in this process."""

from services.ingestor.app import service
from skyport.runtime import run_service

run_service(service)
