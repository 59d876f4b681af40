defmodule Sandbox.LoggerFilterTest do
  use Sandbox.Case, async: true

  require Logger

  @helpers Path.expand("../fixtures/helpers_project", __DIR__)

  # A :logger handler that sends this test the events carrying its marker.
  defmodule Handler do
    @moduledoc false
    def log(%{msg: msg} = event, %{config: %{pid: pid, marker: marker}}) do
      text =
        case msg do
          {:string, s} -> IO.chardata_to_string(s)
          {:report, r} -> inspect(r)
          {format, args} -> IO.chardata_to_string(:io_lib.format(format, args))
        end

      if String.contains?(text, marker), do: send(pid, {:log_event, text, event})
    end
  end

  setup %{test: test} do
    marker = "marker-#{System.unique_integer([:positive])}"
    handler = :"log-#{marker}"
    config = %{config: %{pid: self(), marker: marker}, level: :all}
    :ok = :logger.add_handler(handler, Handler, config)
    on_exit(fn -> :logger.remove_handler(handler) end)
    %{marker: marker, test: test}
  end

  @tag :capture_log
  @tag sandbox: [path: @helpers]
  test "events logged by a sandbox's processes carry its id", %{sandbox: id, marker: marker} do
    # From the sandbox's own code (its module calls Logger) ...
    assert {:ok, :logged} = Sandbox.call(id, HelperApp, :log, ["from sandbox code #{marker}"])
    assert_receive {:log_event, "from sandbox code " <> _, %{meta: %{sandbox_id: ^id}}}

    # ... from host code run in it, and from a process it spawned.
    {:ok, _} = Sandbox.run(id, fn -> Logger.warning("from run #{marker}") end)
    assert_receive {:log_event, "from run " <> _, %{meta: %{sandbox_id: ^id}}}

    {:ok, :ok} =
      Sandbox.run(id, fn ->
        task = Task.async(fn -> :logger.error(~c"from a task ~s", [marker]) end)
        Task.await(task)
      end)

    assert_receive {:log_event, "from a task " <> _, %{meta: %{sandbox_id: ^id}}}
  end

  @tag :capture_log
  @tag sandbox: [path: @helpers]
  test "host events do not, and existing metadata is kept", %{sandbox: id, marker: marker} do
    Logger.warning("from the host #{marker}")
    assert_receive {:log_event, "from the host " <> _, %{meta: meta}}
    refute Map.has_key?(meta, :sandbox_id)

    {:ok, _} = Sandbox.run(id, fn -> Logger.warning("explicit #{marker}", sandbox_id: "mine") end)

    assert_receive {:log_event, "explicit " <> _, %{meta: %{sandbox_id: "mine"}}}
  end

  @tag :capture_log
  @tag sandbox: [path: @helpers]
  test "a formatter prints it", %{sandbox: id, marker: marker} do
    # Elixir's formatter, as `config :logger, :console, metadata: [:sandbox_id]`
    # sets it up.
    {:ok, _} = Sandbox.run(id, fn -> Logger.warning("formatted #{marker}") end)
    assert_receive {:log_event, "formatted " <> _ = text, event}

    line =
      Logger.Formatter.compile("$metadata$message")
      |> Logger.Formatter.format(:warning, text, {{2024, 1, 1}, {0, 0, 0, 0}},
        sandbox_id: event.meta.sandbox_id
      )
      |> IO.chardata_to_string()

    assert line == "sandbox_id=#{id} formatted #{marker}"
  end

  test "the filter is installed once and survives a bad event" do
    assert {:sandbox_id, _} = List.keyfind(:logger.get_primary_config().filters, :sandbox_id, 0)
    assert Sandbox.LoggerFilter.install() == :ok

    assert length(
             Enum.filter(:logger.get_primary_config().filters, &(elem(&1, 0) == :sandbox_id))
           ) == 1

    # Events without a group leader, or with one that is not a sandbox's.
    event = %{level: :info, msg: {:string, "x"}, meta: %{}}
    assert Sandbox.LoggerFilter.filter(event, :ok) == event
    event = %{event | meta: %{gl: self()}}
    assert Sandbox.LoggerFilter.filter(event, :ok) == event
  end
end
