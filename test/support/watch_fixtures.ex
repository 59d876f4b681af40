defmodule Sandbox.Test.WatchFixtures do
  @moduledoc false
  # A small mix project for the source-reload and watcher tests, under a
  # namespace of the test's own:
  #
  #   NS.Shape  — a struct and a macro (`area/1`) used at compile time
  #   NS.Calc   — uses NS.Shape's struct and macro (a compile-time dependent)
  #   NS.Server — a GenServer registered under its module name, counting
  #               calls; `version/0`; code_change keeps the state
  #   NS.App    — the application, starting a supervisor of NS.Server

  import Sandbox.Test.Fixtures, only: [project: 2]

  def write_project(dir, ns, app) do
    project(dir, %{
      "mix.exs" => """
      defmodule #{ns}.MixProject do
        use Mix.Project
        def project, do: [app: #{inspect(app)}, version: "0.1.0", elixir: "~> 1.14"]
        def application, do: [mod: {#{ns}.App, []}]
      end
      """,
      "lib/app.ex" => """
      defmodule #{ns}.App do
        use Application
        def start(_type, _args) do
          Supervisor.start_link([#{ns}.Server], strategy: :one_for_one, name: #{ns}.App)
        end
      end
      """,
      "lib/shape.ex" => shape(ns, "s.w * s.h"),
      "lib/calc.ex" => """
      defmodule #{ns}.Calc do
        require #{ns}.Shape
        def area(w, h) do
          s = %#{ns}.Shape{w: w, h: h}
          #{ns}.Shape.area(s)
        end
      end
      """,
      "lib/server.ex" => server(ns, 1)
    })
  end

  def shape(ns, formula) do
    """
    defmodule #{ns}.Shape do
      defstruct [:w, :h]
      defmacro area(shape) do
        quote do
          s = unquote(shape)
          #{formula}
        end
      end
    end
    """
  end

  def server(ns, version) do
    """
    defmodule #{ns}.Server do
      use GenServer
      def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
      def version, do: #{version}
      def bump, do: GenServer.call(__MODULE__, :bump)
      def get, do: GenServer.call(__MODULE__, :get)
      @impl true
      def init(n), do: {:ok, n}
      @impl true
      def handle_call(:bump, _from, n), do: {:reply, n + 1, n + 1}
      def handle_call(:get, _from, n), do: {:reply, {version(), n, self()}, n}
      @impl true
      def code_change(_old, n, _extra), do: {:ok, n}
    end
    """
  end

  @doc "Waits for a reload event of sandbox `id` (subscribed), returning its name and metadata."
  def await_reload(id, timeout \\ 20_000) do
    receive do
      {:sandbox_event, [:sandbox, :reload, event], _m, %{sandbox_id: ^id} = meta}
      when event in [:reloaded, :failed] ->
        {event, meta}
    after
      timeout -> raise "no reload event for #{id} within #{timeout} ms"
    end
  end
end
