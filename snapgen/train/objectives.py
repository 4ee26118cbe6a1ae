"""Training objectives (NVlabs/edm's losses): every one is called ``objective(net, batch, step) ->
(loss, logs)``, owns its state and returns ``logs`` as detached tensors (read only when logged).

* :class:`FlowMatching` (stage ``base``, the proxy): rectified flow, this module;
* :class:`snapgen.train.kd.KnowledgeDistillation` (stage ``kd``): + output- and feature-level KD;
* :class:`snapgen.train.step_distill.StepDistillation` (stage ``step_distill``): KD from a few-step
  teacher + an adversarial term, with its own discriminator update inside the call;
* :class:`snapgen.train.reconstruction.DecoderReconstruction` (stage ``decoder``, the decoder proxy):
  MSE + LPIPS (where present) + adversarial, its discriminator updated inside the call.

Diffusion objectives call ``net(x_t, t * 1000, ctx, pooled) -> (velocity, projected features)``
(:class:`snapgen.train.models.Student`) on batches of :class:`snapgen.train.batches.FlowBatches`.
"""
from __future__ import annotations

from snapgen.flow import flow_error, interpolate


class FlowMatching:
    """The batch mean of the per-sample velocity error at the batch's timesteps."""

    def __call__(self, net, batch: dict, step: int):
        xt = interpolate(batch["x0"], batch["noise"], batch["t"])
        v, _ = net(xt, batch["t"] * 1000, batch["ctx"], batch["pooled"])
        return flow_error(v, batch["x0"], batch["noise"]).mean(), {}
