"""The request pipeline: resolve the model, call the provider, account for the request."""

from iatros.gateway.context import RequestContext
from iatros.gateway.pipeline import Deployment, Gateway

__all__ = ["Deployment", "Gateway", "RequestContext"]
