defmodule Sandbox.Test.ReloadFixtures do
  @moduledoc false
  # A small sandbox project for the hot reload tests, under a namespace of
  # the test's own (so that tests compiling new versions in the host never
  # share module names), and the sources of its later versions.
  #
  #   NS.Sup    — supervisor of two NS.Store servers, registered as NS.Store
  #               and NS.Second
  #   NS.Store  — a GenServer; version 1 holds an integer, later versions
  #               %{count: n}; `code_change/3` converts both ways
  #   NS.Calc   — a plain module the Store calls (`version/0`), and `park/1`
  #               to keep a process inside its code
  #   NS.Ping, NS.Pong — a dependency cycle
  #   NS.Relay  — a GenServer that calls the Store server when told

  alias Sandbox.Test.BeamHelpers

  @doc "The project's files, version 1."
  def sources(ns) do
    %{
      "sup.ex" => sup_source(ns),
      "store.ex" => store_source(ns, 1),
      "calc.ex" => calc_source(ns, 1),
      "ping.ex" => ping_source(ns),
      "relay.ex" => relay_source(ns)
    }
  end

  def sup_source(ns) do
    """
    defmodule #{ns}.Second do
      @moduledoc false
    end

    defmodule #{ns}.Sup do
      use Supervisor

      def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)

      @impl true
      def init(_arg) do
        Supervisor.init(
          [
            Supervisor.child_spec({#{ns}.Store, #{ns}.Store}, id: :first),
            Supervisor.child_spec({#{ns}.Store, #{ns}.Second}, id: :second),
            #{ns}.Relay
          ],
          strategy: :one_for_one,
          max_restarts: 100,
          max_seconds: 1
        )
      end
    end
    """
  end

  @doc """
  NS.Store at `version`. Options: `:code_change` (the source of the
  `code_change/3` clauses, replacing the default ones).
  """
  def store_source(ns, version, opts \\ []) do
    {init, bump, default_change} =
      if version == 1 do
        {"{:ok, 0}", "def handle_call(:bump, _from, n), do: {:reply, n + 1, n + 1}",
         """
         def code_change({:down, _to}, %{count: n}, _extra), do: {:ok, n}
           def code_change(_old, state, _extra), do: {:ok, state}
         """}
      else
        {"{:ok, %{count: 0}}",
         "def handle_call(:bump, _from, %{count: n} = s), do: {:reply, n + 1, %{s | count: n + 1}}",
         """
         def code_change(_old, n, _extra) when is_integer(n), do: {:ok, %{count: n}}
           def code_change(_old, state, _extra), do: {:ok, state}
         """}
      end

    code_change = Keyword.get(opts, :code_change, default_change)

    """
    defmodule #{ns}.Store do
      use GenServer
      # Compiled alone (as a user's own compile of one file would).
      @compile {:no_warn_undefined, #{ns}.Calc}

      def start_link(name), do: GenServer.start_link(__MODULE__, :ok, name: name)

      @impl true
      def init(:ok), do: #{init}

      @impl true
      def handle_call(:state, _from, s), do: {:reply, s, s}
      def handle_call(:version, _from, s), do: {:reply, version(), s}

      def handle_call(:pair, _from, s) do
        a = version()
        b = #{ns}.Calc.version()
        {:reply, {a, b}, s}
      end

      def handle_call({:block, pid}, _from, s) do
        send(pid, {:blocked, self()})

        receive do
          :release -> {:reply, :released, s}
        end
      end

      def handle_call(:crash, _from, _s), do: raise("crash")
      #{bump}

      def version, do: #{version}
      def version_of(server), do: GenServer.call(server, :version)
      def pad, do: "#{String.duplicate("x", 97 * version)}"

      @impl true
      #{code_change}
    end
    """
  end

  def calc_source(ns, version) do
    """
    defmodule #{ns}.Calc do
      def version, do: #{version}

      def park(pid) do
        send(pid, {:parked, self()})

        receive do
          :never -> :ok
        end
      end
    end
    """
  end

  # A server that calls the Store (through `Store.version_of/1`) when told.
  def relay_source(ns, version \\ 1) do
    """
    defmodule #{ns}.Relay do
      use GenServer

      def version, do: #{version}

      def start_link(_arg), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

      @impl true
      def init(:ok), do: {:ok, nil}

      @impl true
      def handle_call({:relay, pid}, _from, s) do
        send(pid, {:relaying, self()})

        receive do
          :go -> {:reply, #{ns}.Store.version_of(#{ns}.Store), s}
        end
      end
    end
    """
  end

  def ping_source(ns) do
    """
    defmodule #{ns}.Ping do
      def ping(0), do: :ping
      def ping(n), do: #{ns}.Pong.pong(n - 1)
    end

    defmodule #{ns}.Pong do
      def pong(0), do: :pong
      def pong(n), do: #{ns}.Ping.ping(n - 1)
    end
    """
  end

  @doc """
  The BEAM of the one module `source` defines, compiled here (the user's
  own compile) and unloaded again.
  """
  def beam!(source) do
    [{_module, beam}] = BeamHelpers.compile_unloaded(source)
    beam
  end
end
