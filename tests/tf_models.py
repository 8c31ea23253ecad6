"""Small TensorFlow models for the tests, built deterministically (seeded) and with
non-degenerate outputs: scaled initializers and BatchNorm statistics calibrated on the
data, so that a numeric comparison can actually fail."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import keras

IMAGE = (16, 16, 3)
CLASSES = 10
SEQ, WIDTH = 8, 32


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random images (a low-frequency pattern plus noise), float32 NHWC."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 4, 4, IMAGE[2])).astype(np.float32)
    up = np.repeat(np.repeat(base, IMAGE[0] // 4, axis=1), IMAGE[1] // 4, axis=2)
    return (up + 0.3 * rng.standard_normal((n,) + IMAGE)).astype(np.float32)


def _calibrate_batch_norm(model: keras.Model, data: np.ndarray) -> None:
    """Set every BatchNormalization's moving statistics to its input's batch statistics
    (so activations stay O(1) through the network); gamma/beta get mild random values."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(model.input, layer.input)
        x = probe(data, training=False).numpy()
        axes = tuple(range(x.ndim - 1))
        channels = x.shape[-1]
        gamma = (1.0 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
        beta = (0.1 * rng.standard_normal(channels)).astype(np.float32)
        layer.set_weights([gamma, beta, x.mean(axis=axes).astype(np.float32), x.var(axis=axes).astype(np.float32)])


def make_cnn(seed: int = 0) -> keras.Model:
    """Conv2D -> BatchNorm -> ReLU -> MaxPool -> Conv2D -> BatchNorm -> ReLU ->
    GlobalAveragePooling -> Dense softmax, calibrated on :func:`images`."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(IMAGE, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", kernel_initializer=init)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", kernel_initializer=init)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed))(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    _calibrate_batch_norm(model, images(16, seed=7))
    return model


def tokens(n: int = 2, seed: int = 0) -> np.ndarray:
    """Random embeddings, float32 [n, SEQ, WIDTH]."""
    return np.random.default_rng(seed).standard_normal((n, SEQ, WIDTH)).astype(np.float32)


def make_transformer(seed: int = 0) -> keras.Model:
    """One post-norm transformer encoder block: MultiHeadAttention + residual +
    LayerNormalization, then Dense(gelu) -> Dense + residual + LayerNormalization."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SEQ, WIDTH), name="tokens")
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=WIDTH // 4)(inputs, inputs)
    x = keras.layers.LayerNormalization()(inputs + attention)
    hidden = keras.layers.Dense(2 * WIDTH, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(WIDTH)(hidden))
    return keras.Model(inputs, x, name="encoder_block")


def make_control_flow(seed: int = 0) -> tf.types.experimental.PolymorphicFunction:
    """A tf.function with a tf.while_loop (three tanh(x @ W) steps) and a tf.cond on the
    result's sign; returns {"out": ..., "mean": ...}. Its weights are tf.Variables."""
    rng = np.random.default_rng(seed)
    weight = tf.Variable((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32))
    dense = tf.Variable((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
    def model(x):
        def body(i, h):
            return i + 1, tf.tanh(tf.matmul(h, weight))
        _, h = tf.while_loop(lambda i, h: i < 3, body, [tf.constant(0), x])
        h = tf.cond(tf.reduce_sum(h) > 0.0, lambda: h * 2.0, lambda: h - 1.0)
        out = tf.nn.relu(tf.matmul(h, dense))
        return {"out": out, "mean": tf.reduce_mean(h, axis=1)}

    model.variables_ = (weight, dense)  # keep the variables alive with the function
    return model


def make_fully_convolutional(seed: int = 0) -> keras.Model:
    """A Keras CNN on images of any size (input ``(None, None, None, 3)``): three
    stride-2 valid 5x5 convolutions (receptive field 29 pixels: an 8x8 input is too small)
    with BatchNorm and ReLU, global max pooling and a Dense head; calibrated on 64x64
    versions of :func:`images`."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((None, None, 3), name="image")
    x = inputs
    for width in (8, 16, 16):
        x = keras.layers.Conv2D(width, 5, strides=2, padding="valid", kernel_initializer=init)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed))(x)
    model = keras.Model(inputs, outputs, name="fully_convolutional")
    _calibrate_batch_norm(model, np.repeat(np.repeat(images(8, seed=5), 4, axis=1), 4, axis=2))
    return model


def make_tensor_array(seed: int = 0) -> tf.types.experimental.PolymorphicFunction:
    """A tf.function that writes MatMul results into TensorArrays (TensorList ops on
    DT_VARIANT handles): two writes in the main graph, then a tf.while_loop that
    accumulates tanh(h @ W) steps in a second TensorArray; returns a MatMul of the max of
    the first stack plus the sum of the second."""
    rng = np.random.default_rng(seed)
    weight = tf.constant((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
    def model(x):
        first = tf.TensorArray(tf.float32, size=2, element_shape=[None, WIDTH])
        first = first.write(0, tf.matmul(x, weight)).write(1, tf.matmul(x * 2.0, weight))
        steps = tf.TensorArray(tf.float32, size=3)

        def body(i, h, steps):
            h = tf.tanh(tf.matmul(h, weight))
            return i + 1, h, steps.write(i, h)

        _, h, steps = tf.while_loop(lambda i, h, steps: i < 3, body, [0, x, steps])
        return tf.matmul(tf.reduce_max(first.stack(), 0), weight) + tf.reduce_sum(steps.stack(), 0) + h

    return model
