"""ModelService: the loaded model's contract, calibrated tiers and the databases using it."""

from __future__ import annotations

import json

import grpc
from lookalike.server.core.service import LookalikeService
from lookalike.server.transport.errors import grpc_errors
from lookalike.v1 import model_service_pb2 as pb
from lookalike.v1 import model_service_pb2_grpc as pb_grpc


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, service: LookalikeService) -> None:
        self._service = service

    @grpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        models = []
        for m in self._service.list_models():
            model = pb.Model(name=m["name"], identity=m["identity"], dimension=m["dimension"],
                             preprocessing_json=json.dumps(m["preprocessing"], sort_keys=True),
                             databases=m["databases"], is_default=m["default"], loaded=m["loaded"],
                             digest=m["digest"], device=m["device"], execution=m["execution"])  # fmt: skip
            if m["tiers"]:
                t = m["tiers"]
                model.tiers.CopyFrom(pb.SimilarityTiers(duplicate=t["duplicate"], near=t["near"], similar=t["similar"],
                                                        calibration_json=json.dumps(m["calibration"] or {},
                                                                                    sort_keys=True)))  # fmt: skip
            models.append(model)
        return pb.ListModelsResponse(models=models)
