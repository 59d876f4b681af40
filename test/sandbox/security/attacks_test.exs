defmodule Sandbox.Security.AttacksTest do
  # Each attack is first shown to work (under :low, in a peer node when it
  # could stop a VM), then shown harmless under :high, with the host's
  # state compared before and after.
  use ExUnit.Case, async: true

  import Sandbox.Test.SecurityFixtures
  import Sandbox.Test.AtomFixtures, only: [existing_atoms: 1]

  alias Sandbox.Test.Peer

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    id = "atk#{hash}"

    on_exit(fn ->
      for %{id: sid} <- Sandbox.list_sandboxes(),
          String.starts_with?(sid, id),
          do: Sandbox.destroy_sandbox(sid)
    end)

    %{ns: "Atk#{hash}", id: id}
  end

  # A project whose NS.Code has `code`; created under `profile` as `id`.
  defp sandbox!(ctx, name, code, profile) do
    ns = "#{ctx.ns}#{Macro.camelize(name)}"
    dir = write(Path.join(ctx.tmp_dir, name), ns, code: code)
    id = "#{ctx.id}#{name}#{profile}"
    {:ok, _} = Sandbox.create_sandbox(id, sup(ns), sandbox_path: dir, security_profile: profile)
    {id, code(ns), dir, ns}
  end

  defp security_error?({:error, {:exception, %Sandbox.SecurityError{}, _}}), do: true
  defp security_error?(_), do: false

  describe "fatal to a VM (shown in a peer node)" do
    @describetag :slow

    for {name, code} <- [
          {"apply_halt", "def run(m), do: apply(m, :halt, [])"},
          {"send_init", "def run(name), do: send(name, {:stop, :stop})"},
          {"fun_halt", "def run(m), do: (:erlang.make_fun(m, :halt, 0)).()"}
        ] do
      test "#{name}: stops a VM under :low, raises under :high", ctx do
        code = unquote(code)
        arg = if unquote(name) == "send_init", do: :init, else: :erlang
        ns = "#{ctx.ns}#{Macro.camelize(unquote(name))}"
        dir = write(Path.join(ctx.tmp_dir, unquote(name)), ns, code: code)

        peer = Peer.start!(apps: [:sandbox], args: [~c"-kernel", ~c"logger_level", ~c"error"])

        {:ok, {:ok, _}} =
          Peer.call_or_down(peer, Sandbox, :create_sandbox, [
            "victim",
            sup(ns),
            [sandbox_path: dir, security_profile: :low]
          ])

        assert vm_stopped?(peer, fn ->
                 Peer.call_or_down(peer, Sandbox, :call, ["victim", code(ns), :run, [arg]])
               end)

        id = "#{ctx.id}#{unquote(name)}"
        {:ok, _} = Sandbox.create_sandbox(id, sup(ns), sandbox_path: dir, security_profile: :high)
        :ok = Sandbox.subscribe(id)
        assert security_error?(Sandbox.call(id, code(ns), :run, [arg]))
        # Under :high the sandbox is stopped too.
        assert {:ok, %{status: :error, error: {:security_violation, _}}} = status_after(id)
      end
    end
  end

  # The peer VM stops: during the call, or after it returned (`init`
  # stops the VM asynchronously, after the sender got on).
  defp vm_stopped?(peer, call) do
    ref = Process.monitor(peer)

    case call.() do
      {:down, _} ->
        true

      {:ok, _} ->
        receive do
          {:DOWN, ^ref, :process, ^peer, _} -> true
        after
          60_000 -> false
        end
    end
  end

  # The sandbox's info once a violation's consequences are done (the
  # caller subscribed to the sandbox before the violation): the violating
  # process has exited, the security controller has seen it go (and asked
  # the instance to stop the sandbox), and the instance has done so.
  defp status_after(id) do
    assert_receive {:sandbox_event, [:sandbox, :security, :violation], _,
                    %{sandbox_id: ^id, pid: pid}},
                   10_000

    ref = Process.monitor(pid)
    assert_receive {:DOWN, ^ref, :process, ^pid, _}, 10_000
    _ = :sys.get_state(Sandbox.SecurityController)
    {:ok, instance, _} = Sandbox.Manager.lookup(id)
    _ = :sys.get_state(instance)
    Sandbox.get_sandbox_info(id)
  end

  test "a host ETS table: written under :low, untouched under :high", ctx do
    table = :ets.new(:host_table, [:public, :set])
    :ets.insert(table, {:k, :host})
    code = "def run(t), do: :ets.insert(t, {:k, :sandbox})"

    {low, mod, _, _} = sandbox!(ctx, "ets", code, :low)
    assert Sandbox.call(low, mod, :run, [table]) == {:ok, true}
    assert :ets.lookup(table, :k) == [k: :sandbox]

    :ets.insert(table, {:k, :host})
    {high, mod, _, _} = sandbox!(ctx, "ets", code, :high)
    assert security_error?(Sandbox.call(high, mod, :run, [table]))
    assert :ets.lookup(table, :k) == [k: :host]
  end

  test "killing a host process: works under :low, refused under :high", ctx do
    code = "def run(pid), do: Process.exit(pid, :kill)"

    victim = spawn(fn -> receive do: (:never -> :ok) end)
    {low, mod, _, _} = sandbox!(ctx, "kill", code, :low)
    ref = Process.monitor(victim)
    assert Sandbox.call(low, mod, :run, [victim]) == {:ok, true}
    assert_receive {:DOWN, ^ref, :process, ^victim, :killed}

    victim = spawn(fn -> receive do: (:never -> :ok) end)
    {high, mod, _, _} = sandbox!(ctx, "kill", code, :high)
    assert security_error?(Sandbox.call(high, mod, :run, [victim]))
    assert Process.alive?(victim)
  end

  test "a pid of another node is not one of the sandbox's processes", ctx do
    code = "def run(pid), do: Process.exit(pid, :kill)"
    {high, mod, _, _} = sandbox!(ctx, "remote", code, :high)
    assert security_error?(Sandbox.call(high, mod, :run, [remote_pid()]))
  end

  # A pid of a node that is not there (the term as another node sends it).
  defp remote_pid do
    <<131, 88, 119, len, _node::binary-size(len), rest::binary>> =
      :erlang.term_to_binary(self(), minor_version: 2)

    node = "elsewhere@nowhere"
    :erlang.binary_to_term(<<131, 88, 119, byte_size(node), node::binary, rest::binary>>)
  end

  test "a dynamic call to a forbidden function raises; to its own modules, works", ctx do
    code = """
    def run(m, f, a), do: apply(m, f, a)
    def own(ns), do: apply(Module.concat([ns, "Code"]), :ok, [])
    def ok, do: :ok
    """

    {high, mod, _, ns} = sandbox!(ctx, "dyn", code, :high)
    assert Sandbox.call(high, mod, :run, [Enum, :sum, [[1, 2]]]) == {:ok, 3}
    # A module name computed at run time is the original one (the
    # sandbox's own `__MODULE__` is its relocated name).
    assert Sandbox.call(high, mod, :own, [ns]) == {:ok, :ok}
    assert Sandbox.call(high, mod, :run, [mod, :ok, []]) == {:ok, :ok}
    # Last: under :high a violation stops the sandbox.
    assert security_error?(Sandbox.call(high, mod, :run, [:os, :cmd, [~c"true"]]))
  end

  # The violating process gets the error first (a call's caller sees it);
  # the sandbox stops when that process is done with it, or soon after if
  # it rescued the error and runs on.
  describe "under :high a violation stops the sandbox" do
    @code """
    def run(t, test) do
      :ets.insert(t, {:k, :sandbox})
    rescue
      e ->
        send(test, {:rescued, self()})

        receive do
          :raise -> reraise e, __STACKTRACE__
          :stay -> receive do: (:never -> :ok)
        end
    end
    """

    setup ctx do
      table = :ets.new(:host_table, [:public, :set])
      {high, mod, _, _} = sandbox!(ctx, "late", @code, :high)
      :ok = Sandbox.subscribe(high)
      test = self()
      task = Task.async(fn -> Sandbox.call(high, mod, :run, [table, test]) end)
      assert_receive {:rescued, pid}, 10_000

      # Whatever the violation asked of the instance, it has done by now.
      {:ok, instance, _} = Sandbox.Manager.lookup(high)
      _ = :sys.get_state(instance)
      assert Process.alive?(pid)
      assert {:ok, %{status: :running}} = Sandbox.get_sandbox_info(high)
      %{high: high, pid: pid, task: task}
    end

    test "once the violating process is done with the error", ctx do
      send(ctx.pid, :raise)
      assert security_error?(Task.await(ctx.task))
      assert {:ok, %{status: :error, error: {:security_violation, _}}} = status_after(ctx.high)
    end

    test "soon after, when the violating process rescued it and runs on", ctx do
      send(ctx.pid, :stay)
      # It is stopped with the sandbox.
      assert {:ok, %{status: :error, error: {:security_violation, _}}} = status_after(ctx.high)
      assert {:error, {:exit, _}} = Task.await(ctx.task)
    end
  end

  # Admission (the spawn guard): past max_processes a spawn fails as in a
  # full process table, and the sandbox stops for the limit (not for a
  # security violation), in every profile.
  for profile <- [:low, :high] do
    test "a spawn past max_processes under #{profile}: system_limit, and the sandbox stops for the limit",
         ctx do
      code = "def run(n), do: for(_ <- 1..n, do: spawn(fn -> receive do: (:never -> :ok) end))"
      ns = "#{ctx.ns}Spawn"
      dir = write(Path.join(ctx.tmp_dir, "spawn"), ns, code: code)
      id = "#{ctx.id}spawn"

      {:ok, _} =
        Sandbox.create_sandbox(id, sup(ns),
          sandbox_path: dir,
          security_profile: unquote(profile),
          resource_limits: %{max_processes: 20}
        )

      :ok = Sandbox.subscribe(id)

      assert {:error, reason} = Sandbox.call(id, code(ns), :run, [100])
      # The spawner fails, or is killed first with the rest of the sandbox.
      assert match?({:exception, %SystemLimitError{}, _}, reason) or reason == {:exit, :killed}

      assert_receive {:sandbox_event, [:sandbox, :limit, :exceeded], %{usage: usage, limit: 20},
                      %{sandbox_id: ^id, limit: :max_processes}},
                     10_000

      assert usage > 20
      {:ok, instance, _} = Sandbox.Manager.lookup(id)
      _ = :sys.get_state(instance)

      assert {:ok, %{status: :error, error: {:limit_exceeded, :max_processes}}} =
               Sandbox.get_sandbox_info(id)

      refute_received {:sandbox_event, [:sandbox, :security, :violation], _, _}
    end
  end

  test "atoms: String.to_atom within the budget, refused beyond it", ctx do
    code = """
    def run(tag, n), do: for(i <- 1..n, do: String.to_atom("atk_\#{tag}_\#{i}"))
    """

    {high, mod, _, _} = sandbox!(ctx, "atoms", code, :high)
    names = fn tag, n -> for i <- 1..n, do: "atk_#{tag}_#{i}" end
    [a, b] = for _ <- 1..2, do: Integer.to_string(System.unique_integer([:positive]))
    assert {:ok, _} = Sandbox.call(high, mod, :run, [a, 100])
    assert existing_atoms(names.(a, 100)) == 100
    assert security_error?(Sandbox.call(high, mod, :run, [b, 20_000]))
    # No more than the budget left (10,000 in all) was made.
    assert existing_atoms(names.(b, 20_000)) <= 10_000 - 100
  end

  test "sending to a host's registered name: refused under :high; to its own, allowed", ctx do
    Process.register(self(), :"atk_host_#{ctx.id}")
    name = :"atk_host_#{ctx.id}"
    code = "def run(name), do: send(name, :hello)"

    {low, mod, _, _} = sandbox!(ctx, "send", code, :low)
    assert Sandbox.call(low, mod, :run, [name]) == {:ok, :hello}
    assert_receive :hello

    {high, mod, _, _} = sandbox!(ctx, "send", code, :high)
    assert security_error?(Sandbox.call(high, mod, :run, [name]))
    refute_received :hello
  end
end
