defmodule Sandbox.Test.BenignFixture do
  @moduledoc false
  # Ordinary OTP code for the security tests: it must run unchanged, with
  # the same results, under every profile.

  import Sandbox.Test.Fixtures, only: [project: 2]

  def write(dir, ns) do
    project(dir, %{
      "sup.ex" => """
      defmodule #{ns}.Sup do
        use Supervisor
        def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)
        @impl true
        def init(_) do
          children = [
            #{ns}.Store,
            {Agent, fn -> 0 end},
            {Task.Supervisor, name: #{ns}.Tasks},
            {DynamicSupervisor, name: #{ns}.Dyn, strategy: :one_for_one}
          ]
          Supervisor.init(children, strategy: :one_for_one)
        end
      end
      """,
      "store.ex" => """
      defmodule #{ns}.Store do
        use GenServer
        require Logger
        def start_link(_), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)
        def put(k, v), do: GenServer.call(__MODULE__, {:put, k, v})
        def get(k), do: GenServer.call(__MODULE__, {:get, k})
        def table, do: GenServer.call(__MODULE__, :table)
        @impl true
        def init(:ok) do
          private = :ets.new(:private, [:set, :private])
          protected = :ets.new(:protected, [:set, :protected])
          :ets.insert(protected, {:started, true})
          Logger.debug("store started")
          {:ok, %{private: private, protected: protected}}
        end
        @impl true
        def handle_call({:put, k, v}, _from, s) do
          :ets.insert(s.private, {k, v})
          {:reply, :ok, s}
        end
        def handle_call({:get, k}, _from, s), do: {:reply, :ets.lookup(s.private, k), s}
        def handle_call(:table, _from, s), do: {:reply, s.protected, s}
      end
      """,
      "shape.ex" => """
      defmodule #{ns}.Shape do
        @callback area(term) :: number
      end
      defmodule #{ns}.Square do
        @behaviour #{ns}.Shape
        defstruct side: 1
        def area(%__MODULE__{side: s}), do: s * s
        def area(s), do: s * s
      end
      defmodule #{ns}.Oops do
        defexception [:message]
      end
      """,
      "work.ex" => """
      defmodule #{ns}.Work do
        def run do
          # GenServer, private ETS through it, protected ETS read directly.
          :ok = #{ns}.Store.put(:a, 1)
          stored = #{ns}.Store.get(:a)
          started = :ets.lookup(#{ns}.Store.table(), :started)

          # Tasks, Agent, a dynamic child.
          task = Task.async(fn -> Enum.sum(1..10) end)
          supervised = Task.Supervisor.async(#{ns}.Tasks, fn -> :math.sqrt(16) end)
          {:ok, agent} = Agent.start_link(fn -> [] end)
          Agent.update(agent, &[:x | &1])
          {:ok, child} = DynamicSupervisor.start_child(#{ns}.Dyn, {Agent, fn -> :dyn end})

          # spawn/send/receive, a process of its own with a name of its own.
          parent = self()
          pid = spawn(fn -> receive do {:ping, from} -> send(from, :pong) end end)
          send(pid, {:ping, parent})
          pong = receive do :pong -> :pong after 5_000 -> :timeout end
          Process.register(self(), #{ns}.Runner)
          send(#{ns}.Runner, :to_myself)
          myself = receive do :to_myself -> :ok after 5_000 -> :timeout end
          Process.unregister(#{ns}.Runner)
          Process.send_after(self(), :tick, 0)
          tick = receive do :tick -> :tick after 5_000 -> :timeout end

          # Dynamic dispatch onto its own modules.
          mod = Module.concat([#{ns}, Square])
          shape = struct(mod, side: 3)
          callback = #{ns}.Square
          captured = &#{ns}.Square.area/1
          dynamic = [
            mod.area(shape),
            apply(mod, :area, [4]),
            callback.area(5),
            captured.(6),
            Enum.map([1, 2], &mod.area/1)
          ]

          # Exceptions, strings, maps, inspect.
          rescued =
            try do
              raise #{ns}.Oops, message: "boom"
            rescue
              e in #{ns}.Oops -> Exception.message(e)
            end

          %{
            stored: stored,
            started: started,
            task: Task.await(task),
            supervised: Task.await(supervised),
            agent: Agent.get(agent, & &1),
            child: Agent.get(child, & &1),
            pong: pong,
            myself: myself,
            tick: tick,
            dynamic: dynamic,
            rescued: rescued,
            text: String.upcase("hi \#{inspect(%{a: [1, 2]})}"),
            map: Map.merge(%{a: 1}, %{b: 2}) |> Map.to_list(),
            math: :math.pow(2, 10),
            atom: String.to_existing_atom("ok")
          }
        end
      end
      """
    })
  end
end
