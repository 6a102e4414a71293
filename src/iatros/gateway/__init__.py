"""The request pipeline: resolve the model, call the provider, account for the request."""

from iatros.gateway.context import RequestContext
from iatros.gateway.pipeline import Gateway
from iatros.routing.router import Deployment, Plan

__all__ = ["Deployment", "Gateway", "Plan", "RequestContext"]
