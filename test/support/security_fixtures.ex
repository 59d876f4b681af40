defmodule Sandbox.Test.SecurityFixtures do
  @moduledoc false
  # Small sandbox projects for the security tests: a supervisor (NS.Sup)
  # starting NS.Worker, whose init runs `init_body`, and NS.Code with
  # `body` (function definitions).

  import Sandbox.Test.Fixtures, only: [project: 2]

  def write(dir, ns, opts \\ []) do
    init_body = Keyword.get(opts, :init, ":ok")
    body = Keyword.get(opts, :code, "def ok, do: :ok")

    project(dir, %{
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
        def init(:ok) do
          #{init_body}
          {:ok, %{}}
        end
        @impl true
        def handle_call(:ping, _from, s), do: {:reply, :pong, s}
      end
      """,
      "code.ex" => """
      defmodule #{ns}.Code do
        #{body}
      end
      """
    })
  end

  def sup(ns), do: Module.concat(ns, Sup)
  def code(ns), do: Module.concat(ns, Code)
end
