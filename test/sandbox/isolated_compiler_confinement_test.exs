defmodule Sandbox.IsolatedCompilerConfinementTest do
  # Compile-time code is confined by the kernel (Landlock): a project whose
  # module body writes outside its job directory, reads a host file, runs a
  # program through a port and connects to a TCP listener. Each attack is
  # first shown to work unconfined (confine: :none, the :low profile), then
  # to fail confined, with the host's state compared before and after.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Sandbox.IsolatedCompilerTestHelpers

  alias Sandbox.IsolatedCompiler
  alias Sandbox.IsolatedCompiler.{Confinement, Pool}
  alias Sandbox.Test.Peer

  setup do
    unless match?({:ok, %{abi: abi}} when abi >= 4, Confinement.status()),
      do: flunk("these tests need Landlock ABI >= 4: #{inspect(Confinement.status())}")

    host = tmp_dir!("confinement-host")
    secret = Path.join(host, "secret.txt")
    content = "secret-#{System.unique_integer([:positive])}"
    File.write!(secret, content)
    {:ok, listener} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(listener)
    on_exit(fn -> :gen_tcp.close(listener) end)

    %{
      host: host,
      secret: secret,
      content: content,
      target: Path.join(host, "written-by-macro"),
      listener: listener,
      port: port
    }
  end

  # A project whose module body (run by the compiler) attempts every
  # attack and keeps each outcome in a function of the compiled module.
  defp attack_project!(ctx, extra_write) do
    dir = tmp_dir!("confinement-project")

    File.write!(Path.join(dir, "attack.ex"), """
    defmodule ConfinementAttack do
      @written (case File.write(#{inspect(ctx.target)}, "pwned") do
                  :ok -> :ok
                  {:error, reason} -> reason
                end)
      @sibling (case File.write(#{inspect(extra_write)}, "pwned") do
                  :ok -> :ok
                  {:error, reason} -> reason
                end)
      @tampered (case File.write("tampered.txt", "pwned") do
                   :ok -> :ok
                   {:error, reason} -> reason
                 end)
      @read (case File.read(#{inspect(ctx.secret)}) do
               {:ok, bytes} -> bytes
               {:error, reason} -> reason
             end)
      @ported (try do
                 System.cmd("/bin/cat", [#{inspect(ctx.secret)}], stderr_to_stdout: true)
               rescue
                 e -> {:raised, Exception.message(e)}
               end)
      @connected (case :gen_tcp.connect({127, 0, 0, 1}, #{ctx.port}, [:binary], 5_000) do
                    {:ok, socket} ->
                      :ok = :gen_tcp.send(socket, "hello")
                      :gen_tcp.close(socket)
                      :ok

                    {:error, reason} ->
                      reason
                  end)
      def results do
        %{
          written: @written,
          sibling: @sibling,
          tampered: @tampered,
          read: @read,
          ported: @ported,
          connected: @connected
        }
      end
    end
    """)

    File.write!(Path.join(dir, "attack_sup.ex"), """
    defmodule ConfinementAttack.Sup do
      use Supervisor
      def start_link(_), do: Supervisor.start_link(__MODULE__, [])
      @impl true
      def init(_), do: Supervisor.init([], strategy: :one_for_one)
    end
    """)

    dir
  end

  # Everything below `dir`: relative path => contents.
  defp snapshot(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true),
        File.regular?(path),
        into: %{},
        do: {Path.relative_to(path, dir), File.read!(path)}
  end

  # The outcomes the compiled module recorded at compile time (loaded in
  # this VM only to read them; its code does nothing else).
  defp results(info) do
    {ConfinementAttack, beam} = List.keyfind(info.modules, ConfinementAttack, 0)
    load_modules!([{ConfinementAttack, beam}])
    apply(ConfinementAttack, :results, [])
  end

  # Whether the attack's TCP connection reached the listener: it was
  # accepted by the kernel before the compile returned, so it waits in the
  # backlog now, or never came.
  defp connection(listener) do
    case :gen_tcp.accept(listener, 0) do
      {:ok, socket} ->
        {:ok, data} = :gen_tcp.recv(socket, 5, 5_000)
        :gen_tcp.close(socket)
        {:connected, data}

      {:error, :timeout} ->
        :none
    end
  end

  describe "compile-time code" do
    test "unconfined (confine: :none), every attack works", ctx do
      opts = private_compiler!("conf_none")
      sibling = Path.join(opts[:artifacts_dir], "sibling-evil")
      project = attack_project!(ctx, sibling)
      before_host = snapshot(ctx.host)
      before_project = snapshot(project)

      assert {:ok, info} = IsolatedCompiler.compile_sandbox(project, [confine: :none] ++ opts)
      assert info.confinement == :none

      assert %{
               written: :ok,
               sibling: :ok,
               tampered: :ok,
               read: content,
               ported: {content, 0},
               connected: :ok
             } = results(info)

      assert content == ctx.content
      assert connection(ctx.listener) == {:connected, "hello"}
      assert snapshot(ctx.host) == Map.put(before_host, "written-by-macro", "pwned")
      assert snapshot(project) == Map.put(before_project, "tampered.txt", "pwned")
      assert File.read!(sibling) == "pwned"
    end

    test "confined (confine: :required), every attack fails and the host is unchanged", ctx do
      opts = private_compiler!("conf_required")
      sibling = Path.join(opts[:artifacts_dir], "sibling-evil")
      project = attack_project!(ctx, sibling)
      before_host = snapshot(ctx.host)
      before_project = snapshot(project)
      before_artifacts = File.ls!(opts[:artifacts_dir])

      assert {:ok, info} = IsolatedCompiler.compile_sandbox(project, [confine: :required] ++ opts)
      assert info.confinement == :landlock

      results = results(info)
      assert results.written == :eacces
      assert results.sibling == :eacces
      assert results.tampered == :eacces
      assert results.read == :eacces
      # The port's program cannot even be started: the worker's processes
      # execute nothing outside the installation.
      # (erl_child_setup's child exits with the errno of its exec: EACCES.)
      assert results.ported == {"", 13}
      assert results.connected == :eacces

      assert connection(ctx.listener) == :none
      assert snapshot(ctx.host) == before_host
      assert snapshot(project) == before_project
      refute File.exists?(sibling)
      # Nothing new in the artifacts directory but the compile's own job
      # directory (and the next worker's).
      assert Enum.all?(File.ls!(opts[:artifacts_dir]) -- before_artifacts, &(&1 =~ ~r/^job-/))
    end

    test ":preferred confines where Landlock is available", ctx do
      opts = private_compiler!("conf_preferred")
      project = attack_project!(ctx, Path.join(ctx.host, "sibling"))

      assert {:ok, info} =
               IsolatedCompiler.compile_sandbox(project, [confine: :preferred] ++ opts)

      assert info.confinement == :landlock
      assert %{written: :eacces, read: :eacces, connected: :eacces} = results(info)
      assert connection(ctx.listener) == :none
    end

    test "a confined compile's result is not served to an unconfined one, nor the reverse",
         ctx do
      opts = private_compiler!("conf_cache")
      project = attack_project!(ctx, Path.join(ctx.host, "sibling"))

      assert {:ok, confined} =
               IsolatedCompiler.compile_sandbox(project, [confine: :required] ++ opts)

      assert {:ok, open} = IsolatedCompiler.compile_sandbox(project, [confine: :none] ++ opts)
      refute open.cached

      assert {:ok, again} =
               IsolatedCompiler.compile_sandbox(project, [confine: :required] ++ opts)

      assert again.cached
      assert again.modules == confined.modules
      assert again.confinement == :landlock
      assert connection(ctx.listener) == {:connected, "hello"}
    end
  end

  describe "workers per project" do
    test "a worker confined to one project serves it again, never another project", ctx do
      opts = private_compiler!("conf_affinity")
      a = attack_project!(ctx, Path.join(ctx.host, "sibling"))
      b = tmp_dir!("confinement-other")
      a_source = Path.join(a, "attack.ex")

      File.write!(Path.join(b, "peek.ex"), """
      defmodule ConfinementPeek do
        @peeked (case File.read(#{inspect(a_source)}) do
                   {:ok, _} -> :read
                   {:error, reason} -> reason
                 end)
        def peeked, do: @peeked
      end
      """)

      compile = fn dir, confine ->
        assert {:ok, info} =
                 IsolatedCompiler.compile_sandbox(dir, [confine: confine, cache: false] ++ opts)

        info
      end

      compile.(a, :required)
      # The worker that replaced the one that served `a` is `a`'s: the next
      # compile of `a` starts no worker but that one's replacement.
      await_replaced(opts[:pool])
      started = Pool.stats(opts[:pool]).workers_started
      compile.(a, :required)
      assert Pool.stats(opts[:pool]).workers_started == started + 1

      # `b` gets a worker of its own, in the place of `a`'s idle one, and
      # its macro cannot read `a`'s sources.
      evicted = Pool.stats(opts[:pool]).evicted
      info = compile.(b, :required)
      assert Pool.stats(opts[:pool]).evicted == evicted + 1
      [{ConfinementPeek, beam}] = info.modules
      load_modules!([{ConfinementPeek, beam}])
      assert apply(ConfinementPeek, :peeked, []) == :eacces

      # (Unconfined, it could.)
      info = compile.(b, :none)
      [{ConfinementPeek, beam}] = info.modules
      :code.purge(ConfinementPeek)
      {:module, _} = :code.load_binary(ConfinementPeek, ~c"peek.beam", beam)
      assert apply(ConfinementPeek, :peeked, []) == :read
    end
  end

  describe "Landlock unavailable or too old (a C-node started with landlock: :off or 3)" do
    defp compiler_on_cnode!(label, landlock) do
      cnode = :"#{label}_cnode_#{System.unique_integer([:positive])}"
      start_supervised!({Sandbox.CNode, name: cnode, landlock: landlock}, id: cnode)
      pool = :"#{label}_pool_#{System.unique_integer([:positive])}"
      artifacts = tmp_dir!("#{label}-artifacts")
      start_supervised!({Pool, name: pool, size: 1, cnode: cnode, artifacts_dir: artifacts})
      cache = :"#{label}_cache_#{System.unique_integer([:positive])}"

      start_supervised!(
        {Sandbox.IsolatedCompiler.Cache, name: cache, dir: tmp_dir!("#{label}-cache")}
      )

      [pool: pool, cache_server: cache, artifacts_dir: artifacts]
    end

    test ":required is refused before any worker runs", ctx do
      opts = compiler_on_cnode!("ll_off_required", :off)
      project = attack_project!(ctx, Path.join(ctx.host, "sibling"))
      assert Pool.landlock(opts[:pool]) == {:unavailable, :forced_off}

      assert IsolatedCompiler.compile_sandbox(project, [confine: :required] ++ opts) ==
               {:error, {:confinement_unavailable, :forced_off}}

      assert jobs(opts[:pool]) == 0
      assert connection(ctx.listener) == :none
      refute File.exists?(ctx.target)

      assert Sandbox.ErrorHandler.classify_error({:confinement_unavailable, :forced_off}) ==
               :system_error
    end

    test ":preferred compiles unconfined, reports it and logs it once", ctx do
      opts = compiler_on_cnode!("ll_off_preferred", :off)
      project = attack_project!(ctx, Path.join(ctx.host, "sibling"))
      :persistent_term.erase({IsolatedCompiler, :logged, {:unavailable, :forced_off}})

      log =
        capture_log(fn ->
          assert {:ok, info} =
                   IsolatedCompiler.compile_sandbox(project, [confine: :preferred] ++ opts)

          assert info.confinement == {:unavailable, :forced_off}
          assert %{written: :ok, read: read} = results(info)
          assert read == ctx.content

          assert {:ok, again} =
                   IsolatedCompiler.compile_sandbox(project, [confine: :preferred] ++ opts)

          assert again.cached
          assert again.confinement == {:unavailable, :forced_off}
        end)

      # The log holds every process's lines: other tests' (:medium node VMs
      # are "not fully confined" too) are not counted.
      warning =
        "Sandbox.IsolatedCompiler: compile workers are not fully confined " <>
          "(confine: :preferred): {:unavailable, :forced_off}"

      assert length(String.split(log, warning)) == 2
      assert connection(ctx.listener) == {:connected, "hello"}
    end

    test "ABI 3 confines files but not TCP: :required is refused, :preferred reports it",
         ctx do
      opts = compiler_on_cnode!("ll_abi3", 3)
      project = attack_project!(ctx, Path.join(ctx.host, "sibling"))
      assert Pool.landlock(opts[:pool]) == {:ok, %{abi: 3}}

      assert IsolatedCompiler.compile_sandbox(project, [confine: :required] ++ opts) ==
               {:error, {:confinement_unavailable, {:landlock_abi, 3}}}

      assert {:ok, info} =
               capture_log_result(fn ->
                 IsolatedCompiler.compile_sandbox(project, [confine: :preferred] ++ opts)
               end)

      assert info.confinement == {:landlock, [:tcp, :ioctl_dev, :scope]}
      assert %{written: :eacces, read: :eacces, tampered: :eacces, connected: :ok} = results(info)
      assert connection(ctx.listener) == {:connected, "hello"}
      refute File.exists?(ctx.target)
    end

    defp capture_log_result(fun) do
      parent = self()
      capture_log(fn -> send(parent, {:result, fun.()}) end)
      assert_received {:result, result}
      result
    end
  end

  describe "the security profile of a sandbox" do
    test "chooses the compile confinement" do
      assert Sandbox.Config.compile_confinement(:high) == :required
      assert Sandbox.Config.compile_confinement(:medium) == :preferred
      assert Sandbox.Config.compile_confinement(:low) == :none

      for level <- [:high, :medium, :low] do
        assert Sandbox.Config.compile_confinement(Sandbox.Config.profile(level)) ==
                 Sandbox.Config.compile_confinement(level)
      end
    end

    test ":low compiles unconfined, :high confined", ctx do
      project = attack_project!(ctx, Path.join(tmp_dir!("confinement-elsewhere"), "sibling"))
      before_host = snapshot(ctx.host)
      low = "conf-low-#{System.unique_integer([:positive])}"
      high = "conf-high-#{System.unique_integer([:positive])}"
      on_exit(fn -> Sandbox.destroy_sandbox(low) end)
      on_exit(fn -> Sandbox.destroy_sandbox(high) end)

      assert {:ok, _} =
               Sandbox.create_sandbox(high, ConfinementAttack.Sup,
                 sandbox_path: project,
                 security_profile: :high
               )

      assert {:ok, %{written: :eacces, read: :eacces, connected: :eacces}} =
               Sandbox.call(high, ConfinementAttack, :results, [])

      assert connection(ctx.listener) == :none
      assert snapshot(ctx.host) == before_host

      assert {:ok, _} =
               Sandbox.create_sandbox(low, ConfinementAttack.Sup,
                 sandbox_path: project,
                 security_profile: :low
               )

      assert {:ok, %{written: :ok, read: read, connected: :ok}} =
               Sandbox.call(low, ConfinementAttack, :results, [])

      assert read == ctx.content
      assert connection(ctx.listener) == {:connected, "hello"}
      assert snapshot(ctx.host) == Map.put(before_host, "written-by-macro", "pwned")
    end

    @tag :tmp_dir
    test "without Landlock, :high refuses the create and :medium goes on", %{tmp_dir: tmp} do
      peer = Peer.start!()
      :ok = Peer.call(peer, Application, :put_env, [:sandbox, :cnode_landlock, :off])
      :ok = Peer.call(peer, Application, :put_env, [:sandbox, :compiler_artifacts_dir, tmp])
      {:ok, _} = Peer.call(peer, Application, :ensure_all_started, [:sandbox])
      project = Path.expand("../../examples/counter", __DIR__)

      assert Peer.call(peer, Sandbox, :create_sandbox, [
               "conf-high",
               :counter,
               [sandbox_path: project, security_profile: :high]
             ]) == {:error, {:confinement_unavailable, :forced_off}}

      assert {:ok, _} =
               Peer.call(peer, Sandbox, :create_sandbox, [
                 "conf-medium",
                 :counter,
                 [sandbox_path: project, security_profile: :medium]
               ])

      assert {:ok, 1} = Peer.call(peer, Sandbox, :call, ["conf-medium", Counter, :increment, []])
    end
  end

  # The worker that served the last job has exited and its replacement is
  # started (a result comes back before its worker is gone).
  defp await_replaced(pool) do
    stats = Pool.stats(pool)

    unless stats.busy == 0 and stats.idle + stats.starting == stats.size,
      do: await_replaced(pool)
  end
end
