"""The ``autoencoder`` task's objectives: the generator (the autoencoder) and the discriminator.

The generator's loss is the reconstruction term (L1 / L2; BCE + Dice + boundary in
``seg_mode``) plus the network's regularisation (``kl`` weighted by ``kl_weight``, linearly
annealed from 0 over ``kl_anneal_steps``; ``vq`` by ``vq_weight``), the perceptual term and,
from update ``gan_start`` on, the adversarial term (``adv_weight``, times Esser et al.'s
adaptive weight when ``adaptive_gan_weight``). The discriminator's objective starts at
``gan_start`` (the engine's ``Objective.start_step``) and scores the reconstructions the
generator made in the same update (detached; MONAI's tutorial recipe) against the inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from medgen.models.autoencoders import (
    SegmentationLoss,
    adaptive_gan_weight,
    adversarial_loss,
    discriminator_logits,
    reconstruction_loss,
)
from medgen.train.engine.batches import to_device
from medgen.train.engine.objectives import Objective
from medgen.train.tasks.autoencoder.model import AUTOENCODER, DISCRIMINATOR, AutoencoderModel


def last_layer(net: nn.Module) -> torch.Tensor:
    """The weight of the decoder's output layer (the adaptive GAN weight's reference)."""
    return [p for p in net.decoder_head() if p.ndim > 1][-1]


class AutoencoderTask:
    """Both objectives' losses and the task's state (the 2.5D perceptual slice generator)."""

    def __init__(self, model: AutoencoderModel, device: torch.device, seed: int) -> None:
        self.model, self.device = model, device
        cfg = model.cfg
        self.generator = torch.Generator().manual_seed(seed)
        self.adversarial = adversarial_loss(cfg.loss.adversarial) if model.discriminator else None
        self.segmentation = None
        if cfg.seg_mode:
            w = cfg.loss
            self.segmentation = SegmentationLoss(w.bce_weight, w.dice_weight, w.boundary_weight)
        self._reconstructions: dict[int, torch.Tensor] = {}  # batch id -> detached output

    # -- schedules ------------------------------------------------------------------------
    def kl_weight(self, step: int) -> float:
        """``kl_weight``, ramped linearly from 0 over ``kl_anneal_steps`` updates."""
        loss = self.model.cfg.loss
        if loss.kl_anneal_steps <= 0:
            return loss.kl_weight
        return loss.kl_weight * min(1.0, step / loss.kl_anneal_steps)

    def gan_on(self, step: int) -> bool:
        """Whether update ``step`` (0-based) trains the GAN."""
        return self.model.discriminator is not None and step >= self.model.cfg.gan_start

    # -- losses ---------------------------------------------------------------------------
    def as_image(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output as an image in [-1, 1] terms (seg mode: logits -> 2p - 1)."""
        return torch.sigmoid(output) * 2 - 1 if self.model.cfg.seg_mode else output

    def perceptual(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS-style distance, channel by channel (each as a grey image)."""
        net = self.model.perceptual
        terms = [
            net(output[:, c : c + 1].float(), x[:, c : c + 1].float(), self.generator).mean()
            for c in range(x.shape[1])
        ]
        return torch.stack(terms).mean()

    def generator_loss(self, nets, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        """The autoencoder's loss on one batch, and its logs."""
        m, cfg = self.model, self.model.cfg
        m.hold_frozen_parts()
        x = m.inputs(to_device(batch, self.device))
        out = nets[AUTOENCODER](x)
        output = out.reconstruction.float()
        logs: dict = {}
        if self.segmentation is not None:
            parts = self.segmentation(output, (x > 0).float())
            rec = parts["loss"]
            logs.update({f"loss_{k}": float(parts[k].detach()) for k in parts if k != "loss"})
        else:
            rec = reconstruction_loss(output, x.float(), cfg.loss.reconstruction)
            logs["loss_rec"] = float(rec.detach())
        if m.perceptual is not None and cfg.loss.perceptual_weight > 0:
            p = self.perceptual(output, x)
            rec = rec + cfg.loss.perceptual_weight * p
            logs["loss_perceptual"] = float(p.detach())
        total = rec
        if "kl" in out.terms:
            w = self.kl_weight(step)
            total = total + w * out.terms["kl"]
            logs.update(loss_kl=float(out.terms["kl"].detach()), kl_weight=w)
        if "vq" in out.terms:
            total = total + cfg.loss.vq_weight * out.terms["vq"]
            logs["loss_vq"] = float(out.terms["vq"].detach())
        logs.update({f"train_{k}": float(v) for k, v in out.stats.items()})
        if self.gan_on(step):
            image = self.as_image(output)
            d = nets.unwrapped(DISCRIMINATOR)
            g = self.adversarial(discriminator_logits(d(image.contiguous())), target_is_real=True,
                                 for_discriminator=False)  # fmt: skip
            weight = torch.tensor(cfg.loss.adv_weight)
            if cfg.loss.adaptive_gan_weight:
                layer = last_layer(nets.unwrapped(AUTOENCODER))
                weight = weight * adaptive_gan_weight(rec, g, layer).cpu()
            total = total + weight.to(g) * g
            logs.update(loss_adv=float(g.detach()), adv_weight=float(weight))
            if len(self._reconstructions) > 64:  # a stale entry (a rolled-back update)
                self._reconstructions.clear()
            self._reconstructions[id(batch)] = image.detach()
        return total, logs

    def discriminator_loss(self, nets, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        """The discriminator's loss: the generator's reconstructions of this batch (made in
        this update) as fake, the inputs as real."""
        fake = self._reconstructions.pop(id(batch), None)
        if fake is None:
            raise RuntimeError(
                f"update {step}: the discriminator objective ran without the generator's "
                "reconstructions of this batch (the generator objective must come first)"
            )
        x = self.model.inputs(to_device(batch, self.device))
        d = nets[DISCRIMINATOR]
        loss_fake = self.adversarial(discriminator_logits(d(fake.contiguous())),
                                     target_is_real=False, for_discriminator=True)  # fmt: skip
        loss_real = self.adversarial(discriminator_logits(d(x.contiguous())),
                                     target_is_real=True, for_discriminator=True)  # fmt: skip
        logs = {"loss_d_fake": float(loss_fake.detach()), "loss_d_real": float(loss_real.detach())}
        return 0.5 * (loss_fake + loss_real), logs

    def objectives(self) -> list[Objective]:
        """The objectives: ``generator`` (the autoencoder's trainable weights: the decoder head
        alone in phase 3) and, with a discriminator, ``discriminator`` from ``gan_start`` on."""
        out = [Objective("generator", (AUTOENCODER,), self.generator_loss)]
        if self.model.discriminator is not None:
            out.append(
                Objective(
                    "discriminator",
                    (DISCRIMINATOR,),
                    self.discriminator_loss,
                    start_step=self.model.cfg.gan_start,
                )
            )
        return out

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The perceptual slice generator, and the weights the run started from."""
        return {"generator": self.generator.get_state(), "init": self.model.init}

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator."""
        self.generator.set_state(state["generator"])
