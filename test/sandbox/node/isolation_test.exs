defmodule Sandbox.Node.IsolationTest do
  # isolation: :node against code written to hurt. Each attack is first
  # shown to work without the protection (in the host, or in a peer node
  # when it stops a VM), then shown to leave the host untouched in a :node
  # sandbox under :high. The host's figures are watched while bombs run, so
  # nothing else runs beside them (async: false). Every test starts VMs:
  # :slow.
  use ExUnit.Case, async: false

  import Sandbox.Test.NodeFixtures
  import Sandbox.Test.ResourceHelpers, only: [start_watch: 0, stop_watch: 1, await_back: 2]

  alias Sandbox.CNode
  alias Sandbox.Test.Peer

  @moduletag :slow
  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  @mib 1024 * 1024

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    id = "iso#{hash}"
    ns = "Iso#{hash}"
    dir = write(Path.join(ctx.tmp_dir, "p"), ns)

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    %{id: id, ns: ns, dir: dir, code: code(ns), sup: sup(ns)}
  end

  defp create!(ctx, suffix, opts) do
    id = ctx.id <> suffix
    {:ok, info} = Sandbox.create_sandbox(id, ctx.sup, [sandbox_path: ctx.dir] ++ opts)
    {id, info}
  end

  defp node!(ctx, suffix, opts \\ []),
    do: create!(ctx, suffix, Keyword.merge([isolation: :node, security_profile: :high], opts))

  # What the VM itself must hold, run where the capability guards do not
  # refuse it first (under :high they refuse `halt`, an escape from the
  # group leader, atoms beyond the budget).
  defp unguarded_node!(ctx, suffix, opts \\ []),
    do: node!(ctx, suffix, Keyword.put(opts, :security_profile, :low))

  describe "fatal to a VM: they stop only the sandbox VM" do
    for {name, fun, arg} <- [{"halt", :halt, :erlang}, {"send_init", :send_to, :init}] do
      test "#{name}: stops a peer VM under :low in-VM; under :high in a :node sandbox, only its VM",
           ctx do
        {fun, arg} = {unquote(fun), unquote(arg)}
        args = if fun == :send_to, do: [arg, {:stop, :stop}], else: [arg]

        # Without the protection: the VM it runs in stops.
        peer = Peer.start!(apps: [:sandbox], args: [~c"-kernel", ~c"logger_level", ~c"error"])

        {:ok, {:ok, _}} =
          Peer.call_or_down(peer, Sandbox, :create_sandbox, [
            "victim",
            ctx.sup,
            [sandbox_path: ctx.dir, security_profile: :low]
          ])

        ref = Process.monitor(peer)
        _ = Peer.call_or_down(peer, Sandbox, :call, ["victim", ctx.code, fun, args])
        # (send(:init, _) returns before the VM is down.)
        assert_receive {:DOWN, ^ref, :process, ^peer, _}, 60_000

        # A :node sandbox: the host goes on; the sandbox's VM is gone (or,
        # once the capability guards refuse the call, the sandbox is
        # stopped by them). Either way the host is untouched.
        {id, info} = node!(ctx, "n")
        :ok = Sandbox.subscribe(id)
        result = Sandbox.call(id, ctx.code, fun, args)

        case result do
          {:error, {:exit, {:vm_down, {:vm_exited, _}}}} ->
            assert {%{restart_count: 1}, %{reason: {:vm_exited, _}}} = await(id, :restarted)
            refute File.exists?("/proc/#{info.os_pid}")
            assert {:ok, %{status: :running, os_pid: new}} = Sandbox.get_sandbox_info(id)
            assert new != info.os_pid
            assert Sandbox.call(id, ctx.code, :ping, []) == {:ok, :pong}

          {:error, {:exception, %Sandbox.SecurityError{}, _}} ->
            :ok

          # send(:init, _) returns before init stops the VM.
          {:ok, {:stop, :stop}} ->
            assert {_, %{reason: {:vm_exited, {:status, 0}}}} = await(id, :restarted)
            refute File.exists?("/proc/#{info.os_pid}")
        end

        assert Process.alive?(Process.whereis(Sandbox.Manager))
      end
    end

    test "a VM that dies too often: status :error after max_restarts", ctx do
      {id, _} = unguarded_node!(ctx, "r", max_restarts: 1, max_seconds: 60)
      :ok = Sandbox.subscribe(id)
      assert {:error, {:exit, {:vm_down, _}}} = Sandbox.call(id, ctx.code, :halt, [:erlang])
      assert {%{restart_count: 1}, _} = await(id, :restarted)
      assert {:error, {:exit, {:vm_down, _}}} = Sandbox.call(id, ctx.code, :halt, [:erlang])
      assert {_, %{reason: {:vm_exited, {:status, 0}}}} = await(id, :failed)

      assert {:ok,
              %{status: :error, error: {:max_restarts_exceeded, {:vm_exited, _}}, os_pid: nil}} =
               Sandbox.get_sandbox_info(id)

      assert Sandbox.call(id, ctx.code, :ping, []) == {:error, :not_found}
      # restart_sandbox/1 starts it again in a new VM.
      assert {:ok, %{status: :running, os_pid: os_pid}} = Sandbox.restart_sandbox(id)
      assert is_integer(os_pid)
      assert Sandbox.call(id, ctx.code, :ping, []) == {:ok, :pong}
    end
  end

  describe "the host's state" do
    test "a host ETS table: written in-VM under :low; untouched from a :node sandbox", ctx do
      table = :ets.new(:host_table, [:public, :set])
      :ets.insert(table, {:k, :host})

      {low, _} = create!(ctx, "l", security_profile: :low)
      assert Sandbox.call(low, ctx.code, :ets_insert, [table]) == {:ok, true}
      assert :ets.lookup(table, :k) == [k: :sandbox]

      :ets.insert(table, {:k, :host})
      {id, _} = node!(ctx, "n")
      assert {:error, _} = Sandbox.call(id, ctx.code, :ets_insert, [table])
      assert :ets.lookup(table, :k) == [k: :host]
    end

    test "killing a host process: works in-VM under :low; not from a :node sandbox", ctx do
      victim = spawn(fn -> receive do: (:never -> :ok) end)
      ref = Process.monitor(victim)
      {low, _} = create!(ctx, "l", security_profile: :low)
      assert Sandbox.call(low, ctx.code, :kill, [victim]) == {:ok, true}
      assert_receive {:DOWN, ^ref, :process, ^victim, :killed}

      victim = spawn(fn -> receive do: (:never -> :ok) end)
      {id, _} = unguarded_node!(ctx, "n")
      _ = Sandbox.call(id, ctx.code, :kill, [victim])
      # The sandbox answered after the exit signal was sent: had it reached
      # the victim, the victim would be dead by now.
      assert Sandbox.call(id, ctx.code, :ping, []) == {:ok, :pong}
      assert Process.alive?(victim)
    end

    test "sending to a host's registered name: delivered in-VM under :low; not from a :node sandbox",
         ctx do
      name = :"iso_host_#{ctx.id}"
      Process.register(self(), name)
      {low, _} = create!(ctx, "l", security_profile: :low)
      assert Sandbox.call(low, ctx.code, :send_to, [name, :hello]) == {:ok, :hello}
      assert_receive :hello

      {id, _} = node!(ctx, "n")

      assert {:error, {:exception, %ArgumentError{}, _}} =
               Sandbox.call(id, ctx.code, :send_to, [name, :hello])

      assert Sandbox.call(id, ctx.code, :send_to, [self(), :hello]) |> elem(0) == :ok
      refute_received :hello
    end

    test "atoms: a flood fills the host's table in-VM under :low; from a :node sandbox, not",
         ctx do
      {low, _} = create!(ctx, "l", security_profile: :low)
      before = :erlang.system_info(:atom_count)
      assert Sandbox.call(low, ctx.code, :atoms, [20_000]) == {:ok, 20_000}
      assert :erlang.system_info(:atom_count) - before >= 20_000

      {id, _} = unguarded_node!(ctx, "n")
      before = :erlang.system_info(:atom_count)
      assert Sandbox.call(id, ctx.code, :atoms, [20_000]) == {:ok, 20_000}
      assert :erlang.system_info(:atom_count) - before < 100
    end
  end

  describe "bombs" do
    # The host's total memory is watched while each bomb runs; without the
    # protection (in-VM, the monitor's sampling) it goes through the host.
    for {bomb, args} <- [binary: [300 * 1024 * 1024], heap: [25_000_000]] do
      test "#{bomb} bomb: through the host's memory in-VM; stopped in a :node sandbox with the host's memory unmoved",
           ctx do
        {bomb, args} = {unquote(bomb), unquote(args)}
        limits = %{max_memory: 64 * @mib}

        {vm, _} = create!(ctx, "v", security_profile: :low, resource_limits: limits)
        watch = start_watch()
        _ = Sandbox.call(vm, ctx.code, bomb, args, timeout: 60_000)
        in_vm = stop_watch(watch)
        assert in_vm.peak.memory - in_vm.base.memory > 64 * @mib
        # The host back where it was before the :node sandbox's turn.
        await_back(in_vm.base, %{processes: 50, memory: 16 * @mib})

        {id, info} = node!(ctx, "n", resource_limits: limits)
        :ok = Sandbox.subscribe(id)
        watch = start_watch()

        assert {:error, {:exit, {:vm_down, {:limit_exceeded, :max_memory}}}} =
                 Sandbox.call(id, ctx.code, bomb, args, timeout: 60_000)

        host = stop_watch(watch)
        assert host.peak.memory - host.base.memory < 16 * @mib

        assert {_, %{limit: :max_memory}} = await(id, :exceeded)

        assert {:ok, %{status: :error, error: {:limit_exceeded, :max_memory}}} =
                 Sandbox.get_sandbox_info(id)

        refute File.exists?("/proc/#{info.os_pid}")
      end
    end

    test "a fork of OS processes (ports allowed): unbounded in-VM under :low; bounded in a :node sandbox",
         ctx do
      # A unique duration marks the attack's processes in /proc.
      seconds = "3600.#{System.unique_integer([:positive])}"
      ctx = %{ctx | dir: write(Path.join(ctx.tmp_dir, "ports"), ctx.ns, ports: true)}

      {low, _} = create!(ctx, "l", security_profile: :low)
      assert Sandbox.call(low, ctx.code, :fork, [20, seconds]) == {:ok, 20}
      forked = await_sleepers(seconds, 20)
      assert length(forked) == 20
      for pid <- forked, do: System.cmd("kill", ["-KILL", pid])

      {id, info} = create!(ctx, "n", isolation: :node, security_profile: :low)
      :ok = Sandbox.subscribe(id)

      assert {:error, {:exit, {:vm_down, {:limit_exceeded, :max_processes}}}} =
               Sandbox.call(id, ctx.code, :fork, [200, seconds], timeout: 60_000)

      assert {_, %{limit: :max_processes}} = await(id, :exceeded)
      refute File.exists?("/proc/#{info.os_pid}")
      # Killed with their VM: none is left.
      assert sleepers(seconds) == []
    end

    test "a call in flight when the VM is told to stop gets the VM's end, not a reply from its shutdown",
         ctx do
      # The C-node stops a VM over a limit with SIGTERM, then SIGKILL. On
      # SIGTERM the VM shuts down in order, killing the sandbox's processes:
      # the call must not come back as an ordinary error from inside.
      {id, info} = node!(ctx, "n")
      busy = Task.async(fn -> Sandbox.call(id, ctx.code, :busy, [120_000], timeout: 180_000) end)
      # Requests are served in order: once the ping is answered, the busy
      # call is being served.
      assert {:ok, :pong} = Sandbox.call(id, ctx.code, :ping, [])
      {_, 0} = System.cmd("kill", ["-TERM", Integer.to_string(info.os_pid)])
      assert {:error, {:exit, {:vm_down, _}}} = Task.await(busy, 180_000)
      refute File.exists?("/proc/#{info.os_pid}")
    end

    test "a process bomb: stopped inside the VM with the same reason as in-VM", ctx do
      {id, info} = node!(ctx, "n", resource_limits: %{max_processes: 50})
      :ok = Sandbox.subscribe(id)
      _ = Sandbox.call(id, ctx.code, :spawn_parked, [500])
      assert {_, %{limit: :max_processes}} = await(id, :exceeded)

      assert {:ok, %{status: :error, error: {:limit_exceeded, :max_processes}, os_pid: os_pid}} =
               Sandbox.get_sandbox_info(id)

      # The in-VM monitor stopped the sandbox; its VM lives on.
      assert os_pid == info.os_pid
    end
  end

  describe "CPU" do
    test "a busy loop out of the in-VM throttle's reach is held by the OS throttle", ctx do
      {slow, slow_info} = unguarded_node!(ctx, "s", resource_limits: %{max_cpu_percentage: 10.0})

      {fast, fast_info} =
        unguarded_node!(ctx, "f", resource_limits: %{max_cpu_percentage: 1000.0})

      # One after the other, each VM's CPU time over the call from /proc.
      {throttled, throttled_share} = busy_share(slow, slow_info.os_pid, ctx.code)
      {free, free_share} = busy_share(fast, fast_info.os_pid, ctx.code)

      assert throttled_share < 0.25, "the throttled VM had #{throttled_share} of a core"

      assert throttled < free,
             "throttled #{throttled} (#{throttled_share}), free #{free} (#{free_share})"

      # Throttled, not killed: it still answers.
      assert Sandbox.call(slow, ctx.code, :ping, []) == {:ok, :pong}
      assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(slow)
    end
  end

  # Runs the escaped busy loop for 3 s in sandbox `id`: its count, and the
  # share of one core its VM got meanwhile (CPU time / wall time).
  defp busy_share(id, os_pid, code) do
    {cpu0, t0} = {vm_cpu(os_pid), System.monotonic_time(:millisecond)}
    {:ok, count} = Sandbox.call(id, code, :escaped_busy, [3_000], timeout: 30_000)
    {cpu1, t1} = {vm_cpu(os_pid), System.monotonic_time(:millisecond)}
    {count, (cpu1 - cpu0) * 1000 / (t1 - t0)}
  end

  defp vm_cpu(os_pid) do
    {:ok, %{^os_pid => %{total: t}}} = CNode.sample([os_pid], descendants: true)
    t.cpu_user + t.cpu_system
  end

  test "benign OTP code gives the same answers in :vm and :node sandboxes", ctx do
    ns = "#{ctx.ns}B"
    dir = write_benign(Path.join(ctx.tmp_dir, "benign"), ns)
    [vm, node] = same_answers(ctx, ns, dir, [])

    assert node == vm
    assert vm.task == 55 and vm.supervised == 4.0 and vm.area == 9
    assert vm.stored == [a: [1, 2]] and vm.registry == [42] and vm.rescued == "boom"
    assert vm.square.__struct__ == Sandbox.module_name("#{ctx.id}same", Module.concat(ns, Square))
  end

  # The security issue's benign fixture also dispatches dynamically onto
  # its own modules, which needs the guards' dynamic-call mapping.
  test "the security issue's benign code gives the same answers in :vm and :node sandboxes",
       ctx do
    ns = "#{ctx.ns}S"
    dir = Sandbox.Test.BenignFixture.write(Path.join(ctx.tmp_dir, "sbenign"), ns)
    [vm, node] = same_answers(ctx, ns, dir, original_names: true)
    assert node == vm
    assert vm.dynamic == [9, 16, 25, 36, [1, 4]]
  end

  # NS.Work.run/0's result in a :vm and then a :node sandbox of `dir`,
  # under the same id (so that relocated names are the same).
  defp same_answers(ctx, ns, dir, call_opts) do
    id = "#{ctx.id}same"

    for isolation <- [:vm, :node] do
      assert {:ok, _} =
               Sandbox.create_sandbox(id, Module.concat(ns, Sup),
                 sandbox_path: dir,
                 isolation: isolation
               )

      assert {:ok, result} = Sandbox.call(id, Module.concat(ns, Work), :run, [], call_opts)
      :ok = Sandbox.destroy_sandbox(id)
      result
    end
  end

  test "a host VM killed with SIGKILL leaves no sandbox VM behind", ctx do
    peer = Peer.start!(apps: [:sandbox], args: [~c"-kernel", ~c"logger_level", ~c"error"])

    {:ok, {:ok, info}} =
      Peer.call_or_down(peer, Sandbox, :create_sandbox, [
        "orphan",
        ctx.sup,
        [sandbox_path: ctx.dir, isolation: :node]
      ])

    vm = info.os_pid
    {:ok, %{^vm => %{descendants: descendants}}} = CNode.sample([vm], descendants: true)
    tree = [vm | Map.keys(descendants)]
    assert Enum.all?(tree, &File.exists?("/proc/#{&1}"))

    host = Peer.call(peer, System, :pid, [])
    {_, 0} = System.cmd("kill", ["-KILL", host])

    assert await_gone(tree, 30_000) == []
  end

  ## Helpers

  defp await(id, name), do: Sandbox.Test.Fixtures.await_event(id, name, 60_000)

  # The pids (strings) of `sleep <seconds>` processes.
  defp sleepers(seconds) do
    for dir <- File.ls!("/proc"),
        dir =~ ~r/^\d+$/,
        {:ok, cmd} <- [File.read("/proc/#{dir}/cmdline")],
        cmd == "sleep\0#{seconds}\0",
        do: dir
  end

  # The sleepers once `n` of them exist (they are forked asynchronously),
  # read every millisecond for at most 10 s.
  defp await_sleepers(seconds, n, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + 10_000
    found = sleepers(seconds)

    if length(found) >= n or System.monotonic_time(:millisecond) > deadline do
      found
    else
      receive after: (1 -> await_sleepers(seconds, n, deadline))
    end
  end

  # The OS pids of `pids` still alive, once none is or after `timeout` ms
  # (read every 10 ms: the C-node notices its host's death by itself).
  defp await_gone(pids, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    gone(pids, deadline)
  end

  defp gone(pids, deadline) do
    alive = Enum.filter(pids, &File.exists?("/proc/#{&1}"))

    if alive == [] or System.monotonic_time(:millisecond) > deadline do
      alive
    else
      receive after: (10 -> gone(alive, deadline))
    end
  end
end
