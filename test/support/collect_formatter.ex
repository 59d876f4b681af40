defmodule Sandbox.Test.CollectFormatter do
  @moduledoc false
  # An ExUnit formatter for nested runs (in a peer VM): it records every
  # finished test as {module, name, :passed | :failed | :skipped | :excluded,
  # failure messages} in the agent named Sandbox.Test.CollectFormatter.Results
  # (started by start_results/0 before the run), and prints nothing.
  use GenServer

  @results __MODULE__.Results

  def start_results do
    {:ok, _} = Agent.start(fn -> [] end, name: @results)
    :ok
  end

  def results, do: Agent.get(@results, &Enum.reverse/1)

  @impl true
  def init(_opts), do: {:ok, nil}

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{} = test}, state) do
    entry = {test.module, test.name, status(test.state), messages(test.state)}
    Agent.update(@results, &[entry | &1])
    {:noreply, state}
  end

  def handle_cast(_event, state), do: {:noreply, state}

  defp status(nil), do: :passed
  defp status({:failed, _}), do: :failed
  defp status({:invalid, _}), do: :failed
  defp status({:skipped, _}), do: :skipped
  defp status({:excluded, _}), do: :excluded

  defp messages({:failed, failures}) do
    for {kind, reason, stack} <- failures do
      case {kind, reason} do
        {:error, %{__exception__: true} = e} -> Exception.message(e)
        _ -> Exception.format(kind, reason, stack)
      end
    end
  end

  defp messages({:invalid, module}), do: ["setup_all failed in #{inspect(module)}"]
  defp messages(_), do: []
end
