defmodule Sandbox.Test.NodeFixtures do
  @moduledoc false
  # A sandbox project for the node isolation tests: NS.Sup starting
  # NS.Worker (answers :ping), and NS.Code with the attacks and workloads.
  # With `ports: true` NS.Code also forks OS processes (which only :low
  # allows at all). With `files: true` the project also has NS.Files: file
  # and TCP attacks, through File and :gen_tcp only (a profile lets them
  # past the guards with `allowed_modules: [File, :gen_tcp]`, so that what
  # stops them is the kernel), and a data file, priv/data.txt.

  import Sandbox.Test.Fixtures, only: [project: 2]

  def write(dir, ns, opts \\ []) do
    fork =
      if Keyword.get(opts, :ports, false),
        do: """
        def fork(n, seconds),
          do: length(for _ <- 1..n, do: Port.open({:spawn, "sleep \#{seconds}"}, []))
        """,
        else: ""

    files =
      if Keyword.get(opts, :files, false),
        do: %{
          "files.ex" => """
          defmodule #{ns}.Files do
            def read(path), do: File.read(path)
            def write(path, data), do: File.write(path, data)
            def own_dir, do: File.cwd()

            # Connects, sends `data` and closes: :ok or {:error, reason}.
            def connect(port, data) do
              case :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 5_000) do
                {:ok, s} ->
                  :ok = :gen_tcp.send(s, data)
                  :gen_tcp.close(s)

                {:error, reason} ->
                  {:error, reason}
              end
            end

            # Listens on a port of its own: :ok or {:error, reason}.
            def listen do
              case :gen_tcp.listen(0, ip: {127, 0, 0, 1}) do
                {:ok, s} -> :gen_tcp.close(s)
                {:error, reason} -> {:error, reason}
              end
            end
          end
          """,
          "priv/data.txt" => "project data"
        },
        else: %{}

    # With `compile_read: path` NS.CompileTime reads `path` while it is
    # compiled (compile-time code, confined as the profile says).
    compile_read =
      case Keyword.get(opts, :compile_read) do
        nil ->
          %{}

        path ->
          %{
            "compile_time.ex" => """
            defmodule #{ns}.CompileTime do
              @data File.read(#{inspect(path)})
              def data, do: @data
            end
            """
          }
      end

    project(dir, files |> Map.merge(compile_read) |> Map.merge(base_files(ns, fork)))
  end

  defp base_files(ns, fork) do
    %{
      "sup.ex" => """
      defmodule #{ns}.Sup do
        use Supervisor
        def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
        @impl true
        def init(_), do: Supervisor.init([#{ns}.Worker], strategy: :one_for_one)
      end
      """,
      "worker.ex" => """
      defmodule #{ns}.Worker do
        use GenServer
        def start_link(_), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)
        @impl true
        def init(:ok), do: {:ok, %{}}
        @impl true
        def handle_call(:ping, _from, s), do: {:reply, :pong, s}
      end
      """,
      "code.ex" => """
      defmodule #{ns}.Code do
        def ping, do: GenServer.call(#{ns}.Worker, :ping)
        def os_pid, do: List.to_integer(:os.getpid())

        # Fatal to a VM.
        def halt(m), do: apply(m, :halt, [])
        def send_to(name, msg), do: send(name, msg)

        # The host's state.
        def ets_insert(t), do: :ets.insert(t, {:k, :sandbox})
        def kill(pid), do: Process.exit(pid, :kill)

        def atoms(n) do
          for(i <- 1..n, do: String.to_atom("atk_\#{System.unique_integer([:positive])}_\#{i}"))
          |> length()
        end

        # Bombs.
        def binary(n), do: byte_size(:binary.copy(<<1>>, n))
        def heap(n), do: length(Enum.to_list(1..n))
        def spawn_parked(n), do: length(for _ <- 1..n, do: spawn(fn -> receive do: (:never -> :ok) end))

        #{fork}
        # CPU: iterations of a loop in `ms` ms of wall time, in a process
        # that left the sandbox's group leader (out of reach of the in-VM
        # throttle).
        def escaped_busy(ms) do
          parent = self()

          spawn(fn ->
            Process.group_leader(self(), Process.whereis(:init))
            send(parent, {:count, busy(ms)})
          end)

          receive do
            {:count, n} -> n
          end
        end

        def busy(ms) do
          deadline = System.monotonic_time(:millisecond) + ms
          count(deadline, 0)
        end

        defp count(deadline, n) do
          if rem(n, 1000) == 0 and System.monotonic_time(:millisecond) >= deadline,
            do: n,
            else: count(deadline, n + 1)
        end
      end
      """
    }
  end

  @doc """
  Ordinary OTP code with no dynamic call onto the project's own modules
  (which needs the capability guards' dynamic-call mapping): NS.Sup, and
  NS.Work.run/0 returning what it saw.
  """
  def write_benign(dir, ns) do
    project(dir, %{
      "sup.ex" => """
      defmodule #{ns}.Sup do
        use Supervisor
        def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
        @impl true
        def init(_) do
          children = [
            #{ns}.Store,
            {Task.Supervisor, name: #{ns}.Tasks},
            {DynamicSupervisor, name: #{ns}.Dyn, strategy: :one_for_one},
            {Registry, keys: :unique, name: #{ns}.Names}
          ]
          Supervisor.init(children, strategy: :one_for_one)
        end
      end
      """,
      "store.ex" => """
      defmodule #{ns}.Store do
        use GenServer
        def start_link(_), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)
        def put(k, v), do: GenServer.call(__MODULE__, {:put, k, v})
        def get(k), do: GenServer.call(__MODULE__, {:get, k})
        @impl true
        def init(:ok), do: {:ok, :ets.new(:store, [:set, :private])}
        @impl true
        def handle_call({:put, k, v}, _from, t), do: {:reply, :ets.insert(t, {k, v}), t}
        def handle_call({:get, k}, _from, t), do: {:reply, :ets.lookup(t, k), t}
      end
      """,
      "work.ex" => """
      defmodule #{ns}.Square do
        defstruct side: 1
        def area(%__MODULE__{side: s}), do: s * s
      end

      defmodule #{ns}.Oops do
        defexception [:message]
      end

      defmodule #{ns}.Work do
        def run do
          true = #{ns}.Store.put(:a, [1, 2])
          task = Task.async(fn -> Enum.sum(1..10) end)
          supervised = Task.Supervisor.async(#{ns}.Tasks, fn -> :math.sqrt(16) end)
          {:ok, agent} = Agent.start_link(fn -> [] end)
          Agent.update(agent, &[:x | &1])
          {:ok, child} = DynamicSupervisor.start_child(#{ns}.Dyn, {Agent, fn -> :dyn end})
          {:ok, _} = Registry.register(#{ns}.Names, :me, 42)
          parent = self()
          pid = spawn(fn -> receive do {:ping, from} -> send(from, :pong) end end)
          send(pid, {:ping, parent})
          pong = receive do :pong -> :pong after 5_000 -> :timeout end
          square = %#{ns}.Square{side: 3}

          rescued =
            try do
              raise #{ns}.Oops, message: "boom"
            rescue
              e in #{ns}.Oops -> Exception.message(e)
            end

          caught =
            try do
              throw({:thrown, 1})
            catch
              :throw, value -> value
            end

          %{
            stored: #{ns}.Store.get(:a),
            task: Task.await(task),
            supervised: Task.await(supervised),
            agent: Agent.get(agent, & &1),
            child: Agent.get(child, & &1),
            registry: Registry.lookup(#{ns}.Names, :me) |> Enum.map(&elem(&1, 1)),
            pong: pong,
            area: #{ns}.Square.area(square),
            square: square,
            inspected: inspect(square),
            rescued: rescued,
            caught: caught,
            text: String.upcase("hi \#{inspect(%{a: [1, 2]})}"),
            binary: (<<a::8, rest::binary>> = "xyz"; {a, rest}),
            stream: Stream.iterate(1, &(&1 * 2)) |> Enum.take(8),
            sorted: Enum.sort_by([%{n: 3}, %{n: 1}], & &1.n),
            float: Float.round(:math.pi(), 5),
            big: Integer.pow(3, 90),
            date: Date.add(~D[2024-02-28], 2),
            pairs: encode(%{"k" => [1, true, nil]})
          }
        end

        defp encode(map), do: Enum.map(map, fn {k, v} -> "\#{k}=\#{inspect(v)}" end)
      end
      """
    })
  end

  def sup(ns), do: Module.concat(ns, Sup)
  def code(ns), do: Module.concat(ns, Code)
end
