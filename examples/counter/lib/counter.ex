defmodule Counter do
  @moduledoc "A counter application: the demo and the lifecycle tests run copies of it."

  defmodule Point do
    @moduledoc false
    defstruct x: 0, y: 0

    defimpl String.Chars do
      def to_string(%{x: x, y: y}), do: "#{x},#{y}"
    end
  end

  def increment, do: GenServer.call(Counter.Server, :increment)
  def value, do: GenServer.call(Counter.Server, :value)
  def greeting, do: Application.get_env(:counter, :greeting)
  def snapshot, do: %{counter: value(), module: __MODULE__}
  def point(x, y), do: %Point{x: x, y: y}
  def version, do: 1
end
