defmodule Sandbox.Node.ConfinementTest do
  # The kernel's confinement of sandbox VMs (Landlock). Each attack runs
  # first in a :low sandbox VM (not confined: it works), then under :high
  # and :medium, where the kernel refuses it. The attacking code goes
  # through File and :gen_tcp, which its profile lets past the capability
  # guards (`allowed_modules`): what stops it is the kernel alone.
  use ExUnit.Case, async: true

  import Sandbox.Test.NodeFixtures

  alias Sandbox.Node.Confinement
  alias Sandbox.SecurityController

  @ops [:basic_otp, :math, :string]
  @past_guards [File, :gen_tcp]

  describe "class/2 and resolve/3: the table of the module documentation" do
    test "the class of each profile" do
      project = "/srv/p"
      {:ok, high} = SecurityController.resolve(:high)
      {:ok, medium} = SecurityController.resolve(:medium)
      {:ok, low} = SecurityController.resolve(:low)

      assert Confinement.class(high, project) == Confinement.pool_class()
      assert Confinement.class(high, project) == {nil, false, false}
      assert Confinement.class(medium, project) == {project, true, true}
      assert Confinement.class(low, project) == :none

      # :high: no TCP and no writes whatever its operations.
      {:ok, high_net} =
        SecurityController.resolve(%{
          isolation_level: :high,
          allowed_operations: @ops ++ [:file_read, :network_client, :file_write]
        })

      assert Confinement.class(high_net, project) == {project, false, false}

      {:ok, high_all} =
        SecurityController.resolve(%{isolation_level: :high, allowed_operations: [:all]})

      assert Confinement.class(high_all, project) == {project, false, false}

      # :medium: TCP with :network_client only.
      {:ok, medium_offline} =
        SecurityController.resolve(%{isolation_level: :medium, allowed_operations: @ops})

      assert Confinement.class(medium_offline, project) == {nil, false, true}
    end

    @tag :capture_log
    test "without Landlock :high is refused, :medium runs unconfined, :low as ever" do
      {:ok, high} = SecurityController.resolve(:high)
      {:ok, medium} = SecurityController.resolve(:medium)
      {:ok, low} = SecurityController.resolve(:low)

      for reason <- [:not_supported, :disabled, :forced_off, :cnode_down] do
        status = {:unavailable, reason}

        assert Confinement.resolve(high, "/p", status) ==
                 {:error, {:confinement_unavailable, reason}}

        assert Confinement.resolve(medium, "/p", status) == {:ok, :none}
        assert Confinement.resolve(low, "/p", status) == {:ok, :none}
      end

      # Below ABI 4 Landlock cannot refuse TCP: not enough for :high.
      old = {:ok, %{abi: 3}}

      assert Confinement.resolve(high, "/p", old) ==
               {:error, {:confinement_unavailable, {:landlock_abi, 3}}}

      assert Confinement.resolve(medium, "/p", old) == {:ok, {"/p", true, true}}

      new = {:ok, %{abi: 4}}
      assert Confinement.resolve(high, "/p", new) == {:ok, {nil, false, false}}
      assert Confinement.resolve(medium, "/p", new) == {:ok, {"/p", true, true}}
    end

    test "the rules: the VM's own directory writable under :medium only, TCP as the class says" do
      high = Confinement.spec({nil, false, false}, "/tmp/vm")
      medium = Confinement.spec({"/srv/none", true, true}, "/tmp/vm")

      assert Confinement.spec(:none, "/tmp/vm") == nil
      assert high.write -- ["/dev/null"] == []
      assert high.tcp == :deny and high.proc_self and high.scope
      assert "/tmp/vm" in medium.write and medium.tcp == :connect
      # A path that does not exist cannot be opened for a rule: left out.
      refute "/srv/none" in medium.read
      # The installation: this library's code, with links resolved.
      ebin = :code.lib_dir(:sandbox, :ebin) |> List.to_string()
      assert Enum.any?(high.read, &String.starts_with?(ebin, &1))
      for path <- (high.read -- ["/tmp/vm"]) ++ high.exec, do: assert(File.exists?(path), path)
    end
  end

  describe "a :node sandbox's VM under Landlock" do
    @describetag :slow
    @describetag :tmp_dir
    @describetag timeout: 300_000

    setup ctx do
      case Sandbox.IsolatedCompiler.Confinement.status() do
        {:ok, %{abi: abi}} when abi >= 4 ->
          :ok

        other ->
          flunk("these tests need Landlock (ABI 4 or later) in the C-node: #{inspect(other)}")
      end

      hash = :erlang.phash2(ctx.test)
      id = "ll#{hash}"
      ns = "Ll#{hash}"
      dir = write(Path.join(ctx.tmp_dir, "p"), ns, files: true)
      secret = Path.join(ctx.tmp_dir, "secret.txt")
      File.write!(secret, "host secret")

      on_exit(fn ->
        for %{id: sid} <- Sandbox.list_sandboxes(),
            String.starts_with?(sid, id),
            do: Sandbox.destroy_sandbox(sid)
      end)

      %{
        id: id,
        dir: dir,
        sup: Module.concat(ns, Sup),
        files: Module.concat(ns, Files),
        secret: secret
      }
    end

    defp create!(ctx, suffix, profile) do
      id = ctx.id <> suffix

      {:ok, _} =
        Sandbox.create_sandbox(id, ctx.sup,
          sandbox_path: ctx.dir,
          isolation: :node,
          security_profile: profile
        )

      id
    end

    defp low(ctx), do: create!(ctx, "l", :low)

    defp high(ctx, ops \\ @ops),
      do:
        create!(ctx, "h", %{
          isolation_level: :high,
          allowed_operations: ops,
          allowed_modules: @past_guards
        })

    defp medium(ctx, ops \\ @ops ++ [:file_read, :network_client]),
      do:
        create!(ctx, "m", %{
          isolation_level: :medium,
          allowed_operations: ops,
          allowed_modules: @past_guards
        })

    defp files(ctx, id, f, args), do: Sandbox.call(id, ctx.files, f, args)

    test "reads beyond the project: work under :low, refused under :high and :medium", ctx do
      host_environ = "/proc/#{System.pid()}/environ"
      project_file = Path.join([ctx.dir, "priv", "data.txt"])

      # Without the protection: the host's file and the host VM's
      # environment are there for the taking.
      low = low(ctx)
      assert files(ctx, low, :read, [ctx.secret]) == {:ok, {:ok, "host secret"}}
      assert {:ok, {:ok, environ}} = files(ctx, low, :read, [host_environ])
      assert environ =~ "PATH="

      high = high(ctx)
      assert files(ctx, high, :read, [ctx.secret]) == {:ok, {:error, :eacces}}
      assert files(ctx, high, :read, [host_environ]) == {:ok, {:error, :eacces}}
      assert files(ctx, high, :read, ["/etc/passwd"]) == {:ok, {:error, :eacces}}
      # :high's code cannot read files at all: its VM is not given the
      # project either.
      assert files(ctx, high, :read, [project_file]) == {:ok, {:error, :eacces}}
      # What the VM itself needs it has: its own /proc entry, the JIT.
      assert {:ok, {:ok, status}} = files(ctx, high, :read, ["/proc/self/status"])
      assert status =~ "beam"

      assert Sandbox.run(high, {:erlang, :system_info, [:emu_flavor]}) ==
               {:ok, :erlang.system_info(:emu_flavor)}

      medium = medium(ctx)
      assert files(ctx, medium, :read, [ctx.secret]) == {:ok, {:error, :eacces}}
      assert files(ctx, medium, :read, [host_environ]) == {:ok, {:error, :eacces}}
      # :medium reads its project.
      assert files(ctx, medium, :read, [project_file]) == {:ok, {:ok, "project data"}}
    end

    test "writes: anywhere under :low; nowhere under :high; only its own directory under :medium",
         ctx do
      tmp_target = fn tag ->
        Path.join(System.tmp_dir!(), "sandbox-ll-#{tag}-#{System.unique_integer([:positive])}")
      end

      # Without the protection: /tmp and the host's file are written.
      low = low(ctx)
      target = tmp_target.("low")
      on_exit(fn -> File.rm(target) end)
      assert files(ctx, low, :write, [target, "pwned"]) == {:ok, :ok}
      assert File.read!(target) == "pwned"
      copy = ctx.secret <> ".copy"
      File.write!(copy, "host secret")
      assert files(ctx, low, :write, [copy, "pwned"]) == {:ok, :ok}
      assert File.read!(copy) == "pwned"

      for {id, own?} <- [{high(ctx, @ops ++ [:file_write]), false}, {medium(ctx), true}] do
        target = tmp_target.(id)
        on_exit(fn -> File.rm(target) end)
        assert files(ctx, id, :write, [target, "pwned"]) == {:ok, {:error, :eacces}}
        refute File.exists?(target)
        assert files(ctx, id, :write, [ctx.secret, "pwned"]) == {:ok, {:error, :eacces}}
        assert File.read!(ctx.secret) == "host secret"

        # Its own directory (its HOME and working directory).
        assert {:ok, {:ok, own}} = files(ctx, id, :own_dir, [])
        assert String.starts_with?(own, System.tmp_dir!())
        mine = Path.join(own, "mine.txt")

        if own? do
          assert files(ctx, id, :write, [mine, "ok"]) == {:ok, :ok}
          assert File.read!(mine) == "ok"
        else
          assert files(ctx, id, :write, [mine, "ok"]) == {:ok, {:error, :eacces}}
          refute File.exists?(mine)
        end
      end
    end

    test "TCP: connects under :low and :medium with :network_client; refused under :high and :medium without",
         ctx do
      {:ok, listener} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false])
      {:ok, port} = :inet.port(listener)

      # Without the protection (and where the profile allows it): the
      # listener gets the connection and its data.
      [low, medium] = [low(ctx), medium(ctx)]

      for id <- [low, medium] do
        assert files(ctx, id, :connect, [port, id]) == {:ok, :ok}
        assert {:ok, s} = :gen_tcp.accept(listener, 5_000)
        assert :gen_tcp.recv(s, 0, 5_000) == {:ok, id}
        :gen_tcp.close(s)
      end

      # :network_client is a client's: under :low the VM may listen, under
      # :medium it connects but never binds.
      assert files(ctx, low, :listen, []) == {:ok, :ok}
      assert files(ctx, medium, :listen, []) == {:ok, {:error, :eacces}}

      # :high even with :network_client allowed, and :medium without it.
      refused = [
        high(ctx, @ops ++ [:network_client]),
        create!(ctx, "o", %{
          isolation_level: :medium,
          allowed_operations: @ops ++ [:file_read],
          allowed_modules: @past_guards
        })
      ]

      for id <- refused do
        assert files(ctx, id, :connect, [port, id]) == {:ok, {:error, :eacces}}
        # connect/3 returned: a connection would be waiting by now.
        assert :gen_tcp.accept(listener, 0) == {:error, :timeout}
      end
    end

    test "compile-time code is confined as the profile says, as for an in-VM sandbox", ctx do
      dir = write(Path.join(Path.dirname(ctx.dir), "ct"), "Ct#{ctx.id}", compile_read: ctx.secret)

      mod = Module.concat("Ct#{ctx.id}", CompileTime)
      sup = Module.concat("Ct#{ctx.id}", Sup)
      opts = [sandbox_path: dir, isolation: :node]

      # :low compiles unconfined (Sandbox.Config.compile_confinement/1).
      low = ctx.id <> "cl"
      assert {:ok, _} = Sandbox.create_sandbox(low, sup, opts ++ [security_profile: :low])
      assert Sandbox.call(low, mod, :data, []) == {:ok, {:ok, "host secret"}}

      # :medium's compile worker reads only its project.
      medium = ctx.id <> "cm"
      assert {:ok, _} = Sandbox.create_sandbox(medium, sup, opts ++ [security_profile: :medium])
      assert Sandbox.call(medium, mod, :data, []) == {:ok, {:error, :eacces}}
    end

    test "without Landlock: :high refused before anything runs, :medium runs unconfined and says so",
         ctx do
      # A VM whose C-node has Landlock turned off.
      peer =
        Sandbox.Test.Peer.start!(
          apps: [:sandbox],
          args: [
            ~c"-sandbox",
            ~c"cnode_landlock",
            ~c"off",
            ~c"-kernel",
            ~c"logger_level",
            ~c"emergency"
          ]
        )

      call = fn m, f, a -> Sandbox.Test.Peer.call(peer, m, f, a) end

      assert call.(Sandbox.IsolatedCompiler.Confinement, :status, []) ==
               {:unavailable, :forced_off}

      opts = [sandbox_path: ctx.dir, isolation: :node]
      high = %{isolation_level: :high, allowed_operations: @ops, allowed_modules: @past_guards}

      assert call.(Sandbox, :create_sandbox, ["h", ctx.sup, opts ++ [security_profile: high]]) ==
               {:error, {:confinement_unavailable, :forced_off}}

      medium = %{isolation_level: :medium, allowed_modules: @past_guards}

      assert {:ok, _} =
               call.(Sandbox, :create_sandbox, ["m", ctx.sup, opts ++ [security_profile: medium]])

      # Unconfined: the host's file is readable.
      assert call.(Sandbox, :call, ["m", ctx.files, :read, [ctx.secret]]) ==
               {:ok, {:ok, "host secret"}}

      _ = call.(:sys, :get_state, [SecurityController])
      _ = call.(:sys, :get_state, [SecurityController])
      {:ok, %{audit: %{path: path}}} = call.(Sandbox.CNode, :info, [])

      assert [false] =
               for(
                 line <- String.split(File.read!(path), "\n", trim: true),
                 {:ok, %{"event" => "created", "sandbox_id" => "m", "os_pid" => _} = l} <- [
                   Sandbox.TestJSON.decode(line)
                 ],
                 do: l["confined"]
               )

      assert :ok = call.(Sandbox, :destroy_sandbox, ["m"])
    end

    test "audit lines say whether the VM is confined, whatever the VM claims", ctx do
      [low, high, medium] = ids = [low(ctx), high(ctx), medium(ctx)]
      expected = %{low => false, high => true, medium => true}

      # The unconfined VM's code writes an audit line claiming otherwise,
      # under another sandbox's id (the VM's audit lines go to the host's
      # log); it is on disk when the call returns.
      forged = %{confined: true, os_pid: 1}

      assert Sandbox.run(low, {SecurityController, :audit, [high, :created, forged]}) ==
               {:ok, :ok}

      # The host's own lines are written by SecurityController's flush,
      # which it runs after the lines queued before this call.
      _ = :sys.get_state(SecurityController)
      _ = :sys.get_state(SecurityController)
      {:ok, %{audit: %{path: path}}} = Sandbox.CNode.info()

      created =
        for line <- String.split(File.read!(path), "\n", trim: true),
            {:ok, %{"event" => "created", "sandbox_id" => id} = l} <- [
              Sandbox.TestJSON.decode(line)
            ],
            id in ids,
            do: {id, l}

      # The host's line (it has the VM's OS pid) for each.
      for id <- ids do
        assert [_] = for({^id, %{"os_pid" => p}} when p != 1 <- created, do: p)
      end

      # Every line, the VM's own and the forged one included.
      assert Enum.any?(created, fn {id, l} -> id == low and l["os_pid"] == 1 end)

      for {id, l} <- created,
          do: assert(l["confined"] == expected[id], "#{id}: #{inspect(l)}")
    end
  end
end
