"""DCMHT: Differentiable Cross-modal Hashing via Multimodal Transformers (Tu et al., ACM MM 2022). Supervised.

The "select" hash layer turns a feature into K two-way choices: ``Linear(d -> 128)``, ReLU, then K
heads ``Linear(128 -> 2)`` with a softmax, so each bit is a probability vector ``p_k`` and the bit is
its argmax (index 0 -> -1, index 1 -> +1). With ``P`` the concatenated 2K-d probability vectors,
``d_ij = ||P_i - P_j||``, ``S_ij = 1`` when items i and j share a label, and the margin
``m = sqrt(2 K vartheta)``:

    L(X, Y) = mean((d S)^2) + mean(((m - min(d, m)) (1 - S))^2)
    L       = L(I, T) + L(I, I) + L(T, T)  [+ q (1 - mean((2 p - 1)^2)), the refactor's quantisation term]

Settings as published: vartheta 0.75, Adam betas (0.9, 0.98), eps 1e-6, weight decay 0.2, hash
layer lr 1e-3. The quantisation weight ``quantization`` defaults to 0, as in the original paper.

Two modes (``mode`` in params.yaml):

- ``frozen`` (default): the select layers train on the encode stage's features.
- ``finetune``: as published, the open_clip image and text towers of ``encode.open_clip`` train
  with the select layers, end to end, on the training split's pixels and captions: the towers at
  ``clip_lr`` (1e-5) and the select layers at ``lr``, one AdamW with the settings above, a linear
  warm-up over the first ``warmup`` (10 %) of the steps then a cosine decay to 0, gradient norm
  clipped at ``grad_clip`` (1.0), texts truncated to ``max_words`` (32) tokens, one caption per item
  drawn (seeded) each epoch when an item has several, fp16 autocast with a gradient scaler on
  CUDA (fp32 on the CPU). Each batch's images are decoded, preprocessed and tokenised in a
  background thread while the previous batch trains (``prefetched``). Codes come from the
  fine-tuned towers, and the saved model holds them.
Labels of the training split only are used; epochs are fixed (the public code picks the best epoch
on the query set, separately per direction: not done here).

Departures, stated: on frozen features the select layer starts with a per-dimension standardisation
fitted on the training split (``network.Standardize``): the CLIP towers it sits on in the paper are
fine-tuned, so their output scale adapts, and frozen L2-normalised features cannot (on the built-in
dataset at 64 bits this raised image-to-text mAP@all from 0.664 to 0.682). params.yaml sets the
hash-layer learning rate to 3e-3 instead of 1e-3 and the hidden width to 512 instead of 128 for
frozen features, both chosen with ``cmhash tune`` on a validation split of the training items
(reports/tune/dcmht-64.md: mean mAP@all 0.723 at the published values, 0.760 at these).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from tqdm import tqdm

from cmhash.encoders.towers import autocast, prefetched
from cmhash.errors import CmhashError
from cmhash.methods import BatchSize, Epochs, LearningRate, Share, Threshold, Weight, Width, to_codes
from cmhash.methods.network import NetworkHash, label_similarity, minibatches

MODES = ("frozen", "finetune")
Mode = Literal["frozen", "finetune"]


def select_hash_layer(in_dim: int, bits: int, hidden: int = 128):
    """Standardisation, ``Linear(in -> hidden)``, ReLU, ``Linear(hidden -> 2K)``: K two-way heads as
    one matrix."""
    from torch import nn

    from cmhash.methods.network import Standardize

    return nn.Sequential(Standardize(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * bits))


def bit_probabilities(logits, bits: int):
    """(n, 2K) head outputs -> (n, K, 2) per-bit probabilities."""
    return logits.view(-1, bits, 2).softmax(dim=-1)


def margin_loss(probs_a, probs_b, similarity, margin: float):
    """DCMHT's L(X, Y) on (n, K, 2) probabilities."""
    import torch

    distance = torch.cdist(probs_a.flatten(1), probs_b.flatten(1))
    return ((distance * similarity) ** 2).mean() + (((margin - distance.clamp(max=margin)) * (1 - similarity)) ** 2).mean()


def quantization_loss(probs):
    """The refactor's ``1 - mean((2 p - 1)^2)``: zero when every bit is certain."""
    return 1 - ((2 * probs[..., 1] - 1) ** 2).mean()


class DCMHT(NetworkHash):
    supervised = True

    def __init__(self, bits: int, seed: int = 0, device: str = "auto", vartheta: Threshold = 0.75, hidden: Width = 512,
                 quantization: Weight = 0.0, epochs: Epochs = 100, batch_size: BatchSize = 128, lr: LearningRate = 3e-3,
                 weight_decay: Weight = 0.2, mode: Mode = "frozen", clip_lr: LearningRate = 1e-5, warmup: Share = 0.1,
                 grad_clip: Weight = 1.0, max_words: Width = 32, progress: bool = True):
        super().__init__(bits, seed, device, epochs, batch_size, progress)
        if mode not in MODES:
            raise CmhashError(f"params.yaml: methods.dcmht.mode is {mode!r}; choose one of {', '.join(MODES)}.")
        self.margin = math.sqrt(2 * self.bits * vartheta)
        self.hidden, self.quantization, self.lr, self.weight_decay = int(hidden), quantization, lr, weight_decay
        self.mode, self.clip_lr, self.warmup, self.grad_clip, self.max_words = mode, clip_lr, warmup, grad_clip, int(max_words)
        self.end_to_end = mode == "finetune"  # the train stage then calls fit_end_to_end / encode_items
        self.rate_setting = "clip_lr" if self.end_to_end else "lr"  # what a diverging loss is blamed on
        self.towers = None  # the fine-tuned open_clip model (finetune mode), see _attach_towers

    def build_networks(self, image_dim, text_dim, label_dim):
        return {"image": select_hash_layer(image_dim, self.bits, self.hidden),
                "text": select_hash_layer(text_dim, self.bits, self.hidden)}

    def make_optimizers(self):
        import torch

        return [torch.optim.AdamW(self.nets.parameters(), lr=self.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=self.weight_decay,
                                  fused=True)]

    def batch_loss(self, batch, epoch):
        return self._loss(self.nets["image"](batch.images), self.nets["text"](batch.texts), batch.labels)

    def _loss(self, image_logits, text_logits, labels):
        similarity = label_similarity(labels, labels)
        image, text = bit_probabilities(image_logits, self.bits), bit_probabilities(text_logits, self.bits)
        loss = (margin_loss(image, text, similarity, self.margin) + margin_loss(image, image, similarity, self.margin)
                + margin_loss(text, text, similarity, self.margin))
        if self.quantization:
            loss = loss + self.quantization * (quantization_loss(image) + quantization_loss(text))
        return loss

    def _bit_margin(self, logits):
        probs = bit_probabilities(logits, self.bits)
        return probs[..., 1] - probs[..., 0]  # > 0 exactly when the argmax is index 1 (bit +1)

    def image_output(self, images):
        return self._bit_margin(self.nets["image"](images))

    def text_output(self, texts):
        return self._bit_margin(self.nets["text"](texts))

    # ---- finetune mode: the open_clip towers train too
    def fit_end_to_end(self, items, towers, rows: np.ndarray, labels: np.ndarray) -> "DCMHT":
        """Train towers and select layers on items ``rows`` of ``items`` (a PreparedData: pixels via
        ``load_images``, captions via ``texts_by_item``); ``towers`` is the open_clip encoder (its
        ``model``, ``preprocess`` and ``tokenizer``), whose model is trained in place."""
        import torch

        torch.manual_seed(self.seed)
        self._attach_towers(towers)
        captions = items.texts_by_item()
        with torch.no_grad():  # the towers' output widths
            image_probe, text_probe = self._tower_outputs(*self._batch_inputs(items, rows[:1], captions, None))
        self._build({"image": image_probe.shape[1], "text": text_probe.shape[1], "label": labels.shape[1]})
        label_tensor = torch.as_tensor(labels, dtype=torch.float32, device=self.device)
        optimizer = torch.optim.AdamW(
            [{"params": self.towers.parameters(), "lr": self.clip_lr}, {"params": self.nets.parameters(), "lr": self.lr}],
            betas=(0.9, 0.98), eps=1e-6, weight_decay=self.weight_decay, fused=True)
        steps_per_epoch = sum(1 for start in range(0, len(rows), self.batch_size) if len(rows) - start >= 2)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(self.epochs * steps_per_epoch, self.warmup))
        cuda = self.device.startswith("cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        generator = torch.Generator().manual_seed(self.seed)
        caption_rng = np.random.default_rng(self.seed)

        def batches(epoch):
            # pixels and tokens of the next batch are prepared in a background thread while this one trains
            indices = [index.numpy() for index in minibatches(len(rows), self.batch_size, generator)]
            return prefetched(indices, lambda index: self._batch_inputs(items, rows[index], captions, caption_rng))

        def step(batch, epoch):
            index, (pixels, tokens) = batch
            with autocast(self.device):
                image_features, text_features = self._tower_outputs(pixels, tokens)
                loss = self._loss(self.nets["image"](image_features.float()), self.nets["text"](text_features.float()),
                                  label_tensor[torch.as_tensor(index, device=self.device)])
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_([*self.towers.parameters(), *self.nets.parameters()], self.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            return loss.item()

        self.towers.train()
        self.nets.train()
        self.train_epochs(batches, step)
        return self

    def _attach_towers(self, towers) -> None:
        """Take the model, preprocessing, tokenizer and architecture of an open_clip encoder."""
        self.towers, self._preprocess, self._tokenizer = towers.model.to(self.device), towers.preprocess, towers.tokenizer
        self.towers_spec = towers.spec()

    def _batch_inputs(self, items, item_rows, captions, caption_rng):
        """CPU side of a batch of items ``item_rows``: pixels through the encoder's preprocessing and
        tokens of one caption each (drawn when ``caption_rng`` is given, else the first), truncated
        to ``max_words`` and padded to the model's context length. Pinned on CUDA for fast copies."""
        import torch
        import torch.nn.functional as F

        texts = [captions[i][caption_rng.integers(len(captions[i]))] if caption_rng is not None else captions[i][0]
                 for i in item_rows]
        pixels = torch.stack([self._preprocess(image) for image in items.load_images(item_rows)])
        context = int(self.towers.context_length)
        tokens = self._tokenizer(texts, context_length=min(self.max_words, context))
        tokens = F.pad(tokens, (0, context - tokens.shape[1]))
        if self.device.startswith("cuda"):
            pixels, tokens = pixels.pin_memory(), tokens.pin_memory()
        return pixels, tokens

    def _tower_outputs(self, pixels, tokens):
        """Image and text tower features of a batch from ``_batch_inputs``."""
        return (self.towers.encode_image(pixels.to(self.device, non_blocking=True)),
                self.towers.encode_text(tokens.to(self.device, non_blocking=True)))

    def encode_items(self, items, item_rows: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(image codes, text codes) of items ``item_rows`` through the fine-tuned towers; an item with
        several captions gets the code of its first."""
        import torch

        if self.towers is None:
            raise CmhashError("DCMHT (finetune) must be fitted (or loaded) before encoding.")
        self.towers.eval()
        self.nets.eval()
        captions, images, texts = items.texts_by_item(), [], []
        with torch.inference_mode(), autocast(self.device):
            chunks = [item_rows[start:start + chunk] for start in range(0, len(item_rows), chunk)]
            for _, inputs in tqdm(prefetched(chunks, lambda rows: self._batch_inputs(items, rows, captions, None)),
                                  total=len(chunks), desc="DCMHT finetune encoding", unit="chunk", disable=not self.progress):
                image_features, text_features = self._tower_outputs(*inputs)
                images.append(self.image_output(image_features.float()).float().cpu().numpy())
                texts.append(self.text_output(text_features.float()).float().cpu().numpy())
        return tuple(to_codes(np.concatenate(c) if c else np.zeros((0, self.bits))) for c in (images, texts))

    def state_dict(self):
        state = super().state_dict()
        if self.towers is not None:
            state["towers"] = {"spec": self.towers_spec, "weights": {k: v.cpu() for k, v in self.towers.state_dict().items()}}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "towers" in state:
            from cmhash.encoders.clip import OpenClipEncoder

            towers = OpenClipEncoder.from_spec(state["towers"]["spec"], device=self.device)
            towers.model.load_state_dict(state["towers"]["weights"])
            self._attach_towers(towers)


def warmup_cosine(total_steps: int, warmup: float):
    """The learning-rate factor at each step: linear from 0 to 1 over the first ``warmup`` share of
    the steps, then a cosine decay to 0 (DCMHT's schedule)."""
    warmup_steps = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
