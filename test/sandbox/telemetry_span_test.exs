defmodule Sandbox.TelemetrySpanTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Helpers, only: [test_sandbox_id: 1]

  alias Sandbox.Test.{Peer, TelemetrySink}

  @counter Path.expand("../../examples/counter", __DIR__)
  @helpers Path.expand("../fixtures/helpers_project", __DIR__)

  @moduletag :tmp_dir

  describe "spans (through Sandbox.subscribe/1)" do
    test "create: start and stop around the lifecycle event, one context", %{test: test} do
      id = test_sandbox_id(test)
      :ok = Sandbox.subscribe(id)
      {:ok, _} = Sandbox.create_sandbox(id, :counter, sandbox_path: @counter)
      on_exit(fn -> Sandbox.destroy_sandbox(id) end)

      events = drain(id)

      names =
        for {name, _, _} <- events,
            name in [
              [:sandbox, :create, :start],
              [:sandbox, :manager, :created],
              [:sandbox, :create, :stop]
            ],
            do: name

      assert names == [
               [:sandbox, :create, :start],
               [:sandbox, :manager, :created],
               [:sandbox, :create, :stop]
             ]

      {_, start_m, start_meta} = find(events, [:sandbox, :create, :start])
      {_, stop_m, stop_meta} = find(events, [:sandbox, :create, :stop])
      assert is_integer(start_m.system_time) and is_integer(start_m.monotonic_time)

      assert stop_m.duration > 0 and
               stop_m.monotonic_time == start_m.monotonic_time + stop_m.duration

      assert %{sandbox_id: ^id, module_or_app: :counter, sandbox_path: @counter} = start_meta
      assert stop_meta.telemetry_span_context == start_meta.telemetry_span_context
      assert stop_meta.result == :ok
    end

    test "create: a failure stops the span with the error", %{test: test} do
      id = test_sandbox_id(test)
      :ok = Sandbox.subscribe(id)

      assert {:error, {:unknown_module_or_app, :nope}} =
               Sandbox.create_sandbox(id, :nope, sandbox_path: @counter)

      {_, _, meta} = find(drain(id), [:sandbox, :create, :stop])
      assert %{result: :error, error: {:unknown_module_or_app, :nope}} = meta
    end

    test "compile: its entry, whether the cache served it; an exception for bad options", ctx do
      dir = Path.join(ctx.tmp_dir, "p")
      File.mkdir_p!(dir)

      File.write!(
        Path.join(dir, "a.ex"),
        "defmodule SpanA#{System.unique_integer([:positive])} do end"
      )

      :ok = Sandbox.subscribe(:all)

      {:ok, _} = Sandbox.IsolatedCompiler.compile_sandbox(dir, write_artifacts: false)
      {:ok, _} = Sandbox.IsolatedCompiler.compile_sandbox(dir, write_artifacts: false)

      stops = for {[:sandbox, :compile, :stop], _, %{path: ^dir} = meta} <- drain(nil), do: meta
      assert [%{cached: false, entry: :compile_sandbox, result: :ok}, %{cached: true}] = stops

      assert_raise ArgumentError, fn ->
        Sandbox.IsolatedCompiler.compile_file(Path.join(dir, "a.ex"), bogus: 1)
      end

      {_, m, meta} = find(drain(nil), [:sandbox, :compile, :exception])
      assert m.duration >= 0

      assert %{kind: :error, reason: %ArgumentError{}, entry: :compile_file, stacktrace: [_ | _]} =
               meta

      assert {:error, {:no_such_directory, _}} =
               Sandbox.IsolatedCompiler.incremental_compile(Path.join(dir, "none"), [])

      {_, _, meta} = find(drain(nil), [:sandbox, :compile, :stop])
      assert %{entry: :incremental_compile, result: :error, error: {:no_such_directory, _}} = meta
    end

    test "reload and rollback", %{test: test} do
      id = test_sandbox_id(test)
      {:ok, _} = Sandbox.create_sandbox(id, :helper_app, sandbox_path: @helpers)
      on_exit(fn -> Sandbox.destroy_sandbox(id) end)
      :ok = Sandbox.subscribe(id)

      [%{beam_data: beam}] = Sandbox.list_module_versions(id, HelperApp)
      assert {:ok, :unchanged} = Sandbox.hot_reload_sandbox(id, beam)
      {_, _, meta} = find(drain(id), [:sandbox, :reload, :stop])
      assert %{kind: :reload, trigger: :api, result: :ok} = meta

      assert {:error, {:unknown_version, HelperApp, 9}} =
               Sandbox.rollback_module(id, HelperApp, 9)

      events = drain(id)
      {_, _, start} = find(events, [:sandbox, :reload, :start])
      {_, _, stop} = find(events, [:sandbox, :reload, :stop])
      assert %{kind: :rollback, sandbox_id: ^id} = start
      assert %{result: :error, error: {:unknown_version, HelperApp, 9}} = stop
    end
  end

  # The stand-in :telemetry module is loaded in a peer VM of its own: loaded
  # here, every event of every concurrent test would go through it.
  test "events go to :telemetry.execute/3 once it is loaded, never loaded by us", %{tmp_dir: tmp} do
    File.write!(Path.join(tmp, "telemetry.beam"), TelemetrySink.telemetry_beam())
    peer = Peer.start!(args: [~c"-pa", String.to_charlist(tmp)], apps: [:sandbox])
    :ok = Peer.call(peer, TelemetrySink, :start, [])

    # On the code path but not loaded: emitting must not load it (a lookup
    # of the code path on every event cost milliseconds).
    {:ok, _} =
      Peer.call(peer, Sandbox, :create_sandbox, ["t0", :counter, [sandbox_path: @counter]])

    refute Peer.call(peer, :erlang, :module_loaded, [:telemetry])
    assert Peer.call(peer, TelemetrySink, :events, []) == []

    # Loaded (as the :telemetry application loads it): every event goes there.
    {:module, :telemetry} = Peer.call(peer, :code, :ensure_loaded, [:telemetry])

    {:ok, _} =
      Peer.call(peer, Sandbox, :create_sandbox, ["t1", :helper_app, [sandbox_path: @helpers]])

    [v1] = Peer.call(peer, Sandbox, :list_module_versions, ["t1", HelperApp])
    {:ok, :unchanged} = Peer.call(peer, Sandbox, :hot_reload_sandbox, ["t1", v1.beam_data])
    :ok = Peer.call(peer, Sandbox, :destroy_sandbox, ["t1"])

    events = Peer.call(peer, TelemetrySink, :events, [])
    names = for {name, _, %{sandbox_id: id}} <- events, id in ["t1", nil], do: name

    assert names == [
             [:sandbox, :create, :start],
             [:sandbox, :compile, :start],
             [:sandbox, :compile, :stop],
             [:sandbox, :manager, :created],
             [:sandbox, :create, :stop],
             [:sandbox, :reload, :start],
             [:sandbox, :reload, :stop],
             [:sandbox, :manager, :destroyed]
           ]

    for {[:sandbox, _, :stop], m, _} <- events, do: assert(m.duration > 0)
  end

  defp drain(id, acc \\ []) do
    receive do
      {:sandbox_event, name, m, %{sandbox_id: sid} = meta} when sid == id or is_nil(id) ->
        drain(id, [{name, m, meta} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp find(events, name) do
    Enum.find(events, &(elem(&1, 0) == name)) ||
      flunk("no #{inspect(name)} in #{inspect(Enum.map(events, &elem(&1, 0)))}")
  end
end
