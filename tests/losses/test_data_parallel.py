"""Every loss gives its single-device values and gradients under pmap, shard_map and sharded jit."""

from tests import testing


def test_every_loss_matches_single_device_on_four_devices():
    out = testing.run_on_devices(
        """
        import functools
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import jaxloss
        assert jax.device_count() == 4
        rng = np.random.default_rng(0)
        batch, classes, samples = 8, 7, 3
        counts = np.arange(1.0, classes + 1) * 10
        # Injected noise is per example, so it shards with the batch like the logits.
        noise = jnp.asarray(rng.standard_normal((batch, classes, samples)), jnp.float32)
        losses = {
            "label_relaxation": lambda z, y, n: jaxloss.label_relaxation_loss(z, y, alpha=0.2),
            "confidence_penalty": lambda z, y, n: jaxloss.confidence_penalty_loss(z, y, beta=0.7),
            "focal": lambda z, y, n: jaxloss.softmax_focal_loss(z, y, gamma=1.5),
            "balanced_softmax": lambda z, y, n: jaxloss.balanced_softmax_loss(
                z, y, class_counts=counts),
            "logit_adjusted": lambda z, y, n: jaxloss.logit_adjusted_loss(
                z, y, class_priors=counts, tau=0.5),
            "smooth_topk_svm": lambda z, y, n: jaxloss.smooth_topk_svm_loss(z, y, k=2, tau=0.5),
            "topk_svm": lambda z, y, n: jaxloss.topk_svm_loss(z, y, k=2),
            "ldam": lambda z, y, n: jaxloss.ldam_loss(z / 10, y, class_counts=counts),
            "balanced_noised_topk": lambda z, y, n: jaxloss.balanced_noised_topk_loss(
                z, y, k=2, epsilon=0.5, noise=n, n_samples=samples),
            "imbalanced_noised_topk": lambda z, y, n: jaxloss.imbalanced_noised_topk_loss(
                z / 10, y, class_counts=counts, k=2, epsilon=0.05, max_m=0.2, noise=n,
                n_samples=samples),
            "exact_quadrature": lambda z, y, n: jaxloss.exact_loss(
                z, y, key=None, method="quadrature"),
        }
        z = jnp.asarray(3 * rng.standard_normal((batch, classes)), jnp.float32)
        y = jnp.asarray(rng.integers(0, classes, batch))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        data = NamedSharding(mesh, P("data"))
        for name, fn in losses.items():
            def mean_loss(z, y, n):
                return jnp.mean(fn(z, y, n))
            grad_fn = jax.value_and_grad(mean_loss)
            ref_val, ref_grad = grad_fn(z, y, noise)
            def per_device(z, y, n):
                val, grad = grad_fn(z, y, n)
                return jax.lax.pmean(val, "data"), grad / 4
            split = lambda a: a.reshape((4, batch // 4) + a.shape[1:])
            pv, pg = jax.pmap(per_device, axis_name="data")(split(z), split(y), split(noise))
            sv, sg = jax.jit(jax.shard_map(
                per_device, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=(P(), P("data"))
            ))(z, y, noise)
            jv, jg = jax.jit(grad_fn)(*(jax.device_put(a, data) for a in (z, y, noise)))
            for val, grad in ((pv[0], pg.reshape(z.shape)), (sv, sg), (jv, jg)):
                np.testing.assert_allclose(val, ref_val, rtol=1e-5, err_msg=name)
                np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7, err_msg=name)
        print("ok", len(losses))
        """
    )
    assert "ok 11" in out
