"""Trains the image metrics' MNIST classifier from scratch, for users without the published weights.

    python -m ebm_jax.evaluation.train_classifier --data_dir /path/to/mnist --out mnist_cnn.npz --epochs 3

The network is the one in ebm_jax/evaluation/classifier.py (32-64-128 convolutions, 256-d features, 10
logits) and the file is written in the same PyTorch-layout npz as digit-recognizer-py's weights, so
`load_classifier` and `--config.eval.classifier_path` take either. Cross-entropy with Adam on the
MNIST training split (images in [-1, 1], normalised inside the classifier as the published network
expects); the test accuracy is printed after each epoch. Numbers from such a classifier are comparable
with each other, not with those computed with another classifier.
"""
import argparse
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_jax.evaluation import classifier


def init_params(key):
    return classifier.MnistClassifier().init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))


def make_train_step(tx):
    def loss_fn(params, x, y):
        logits = classifier.MnistClassifier().apply(params, classifier.normalise(x))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(train_x, train_y, test_x=None, test_y=None, epochs: int = 3, batch_size: int = 128, lr: float = 1e-3,
          seed: int = 0, max_steps: Optional[int] = None, progress: bool = True):
    """Params of a classifier trained on (train_x (N, 28, 28, 1) in [-1, 1], train_y (N,) in 0..9), and the
    list of test accuracies after each epoch (empty without a test set)."""
    from tqdm.auto import tqdm
    classifier.check_images(train_x, "train_x")
    train_y = np.asarray(train_y, np.int32).ravel()
    if len(train_y) != len(train_x) or train_y.min() < 0 or train_y.max() >= classifier.NUM_CLASSES:
        raise ValueError(f"train_y must hold one label in 0..9 per image; got {len(train_y)} labels in "
                         f"[{train_y.min()}, {train_y.max()}] for {len(train_x)} images.")
    batch_size = min(int(batch_size), len(train_x))
    key = jax.random.PRNGKey(seed)
    params = init_params(key)
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    step = make_train_step(tx)
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(train_x) // batch_size  # full batches only: one compiled shape
    accuracies, done = [], 0
    for epoch in range(int(epochs)):
        perm = rng.permutation(len(train_x))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress)
        for i in bar:
            idx = perm[i * batch_size:(i + 1) * batch_size]
            params, opt_state, loss = step(params, opt_state, jnp.asarray(train_x[idx]), jnp.asarray(train_y[idx]))
            done += 1
            if i % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            if max_steps is not None and done >= max_steps:
                break
        bar.close()
        if test_x is not None:
            accuracies.append(classifier.accuracy(params, test_x, test_y))
            if progress:
                tqdm.write(f"epoch {epoch + 1}: test accuracy {accuracies[-1]:.4f}")
        if max_steps is not None and done >= max_steps:
            break
    return params, accuracies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="folder with the MNIST idx files (images and labels)")
    parser.add_argument("--out", required=True, help="the .npz to write (PyTorch layout, read by load_classifier)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many updates (quick tries)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error(f"--epochs ({args.epochs}) and --batch_size ({args.batch_size}) must be >= 1 and --lr "
                     f"({args.lr}) > 0.")
    from ebm_jax.data import DataError
    from ebm_jax.data.images import load_idx_split
    try:
        train_x = load_idx_split(args.data_dir, "train", field="--data_dir")
        test_x = load_idx_split(args.data_dir, "test", field="--data_dir")
        train_y = classifier.load_labels(args.data_dir, "train", field="--data_dir")
        test_y = classifier.load_labels(args.data_dir, "test", field="--data_dir")
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            print(f"error: --data_dir {args.data_dir!r} holds {len(x)} {name} images but {len(y)} labels; "
                  "they must match.", file=sys.stderr)
            return 2
    params, acc = train(train_x, train_y, test_x, test_y, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed, max_steps=args.max_steps)
    classifier.save_classifier(params, args.out)
    print(f"wrote {args.out} (test accuracy {acc[-1]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
