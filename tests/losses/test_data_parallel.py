"""Every registered loss gives its single-device values and gradients under pmap, shard_map and
sharded jit (the list comes from the specs: a new loss is covered without touching this file)."""

from tests import testing


def test_every_loss_matches_single_device_on_four_devices():
    out = testing.run_on_devices(
        """
        import inspect
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import jaxloss
        from tests import testing
        assert jax.device_count() == 4
        rng = np.random.default_rng(0)
        batch, classes = 8, 7
        z = jnp.asarray(3 * rng.standard_normal((batch, classes)), jnp.float32)
        y = jnp.asarray(rng.integers(0, classes, batch))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        data = NamedSharding(mesh, P("data"))
        names = jaxloss.available_losses()
        for name in names:
            spec = jaxloss.loss_spec(name)
            call = testing.spec_call(spec, num_classes=classes)
            # Deterministic, device-independent randomness: injected per-example noise (it shards
            # with the batch) or a deterministic method.
            extra = {} if spec.reproducible is None else spec.reproducible(
                z.shape, rng, {**spec.hyperparameters(), "k": 2})
            arrays = {k: v for k, v in extra.items() if isinstance(v, jax.Array)}
            static = {k: v for k, v in extra.items() if k not in arrays}

            # A loss that couples the examples (EXACT's batch statistics) takes the mapped axis.
            couples = "axis_name" in inspect.signature(spec.fn).parameters

            def mean_loss(z, y, arrays, mapped=False):
                axis = {"axis_name": "data"} if mapped and couples else {}
                return jnp.mean(call(z, y, **arrays, **static, **axis))

            grad_fn = jax.value_and_grad(mean_loss)
            ref_val, ref_grad = grad_fn(z, y, arrays)

            def per_device(z, y, arrays):
                val, grad = grad_fn(z, y, arrays, mapped=True)
                return jax.lax.pmean(val, "data"), grad / 4

            split = lambda a: a.reshape((4, batch // 4) + a.shape[1:])
            pv, pg = jax.pmap(per_device, axis_name="data")(
                split(z), split(y), jax.tree.map(split, arrays))
            sv, sg = jax.jit(jax.shard_map(
                per_device, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=(P(), P("data"))
            ))(z, y, arrays)
            placed = jax.device_put((z, y, arrays), data)
            jv, jg = jax.jit(grad_fn)(*placed)
            for val, grad in ((pv[0], pg.reshape(z.shape)), (sv, sg), (jv, jg)):
                np.testing.assert_allclose(val, ref_val, rtol=1e-5, err_msg=name)
                np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7, err_msg=name)
        print("ok", len(names))
        """
    )
    import jaxloss

    assert f"ok {len(jaxloss.available_losses())}" in out
