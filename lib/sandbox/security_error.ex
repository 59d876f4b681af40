defmodule Sandbox.SecurityError do
  @moduledoc """
  Raised in a sandbox's process that attempts an operation its security
  profile forbids (see `Sandbox.SecurityController`).

  Fields: `sandbox_id`, `target` (`{module, function, arity}`, original
  names; `{:send, destination}` for a send), `class` (the operation class
  the profile lacks, or `:unclassified`) and `reason` (what the run-time
  check found, such as `{:not_a_member, pid}`; `nil` for a call the profile
  forbids outright).
  """

  defexception [:sandbox_id, :target, :class, :reason]

  @impl true
  def message(%__MODULE__{} = e) do
    what =
      case e.target do
        {m, f, a} -> "#{inspect(m)}.#{f}/#{a}"
        other -> inspect(other)
      end

    why = if e.reason, do: ": #{inspect(e.reason)}", else: ""
    "sandbox #{e.sandbox_id} may not call #{what} (#{inspect(e.class)})#{why}"
  end
end
