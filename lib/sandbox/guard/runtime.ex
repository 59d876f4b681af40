defmodule Sandbox.Guard.Runtime do
  @moduledoc """
  The run-time checks behind each sandbox's guard (`Sandbox.Guard`).

  A sandbox's copy of the guard knows its sandbox (an atom, the sandbox's id)
  and calls in here; the sandbox's profile and limits are looked up in this
  module's table (written by `Sandbox.SecurityController.register/3`). The
  checks are those of `Sandbox.SecurityController.Operations` (see
  `t:Sandbox.SecurityController.Operations.check/0`); a failed one is a
  violation (`violation!/4`): `Sandbox.SecurityError` in the caller, an
  audit line, `[:sandbox, :security, :violation]`, and under `:high` the
  sandbox stopped.

  Dynamic calls (`apply/4`, `call_fun/3`) first map the sandbox's own
  module names, as its source wrote them, to its copies: in every profile,
  so that `Module.concat([Dyn, Square]).area(5)` reaches the sandbox's
  `Dyn.Square`.
  """

  alias Sandbox.{GroupLeader, SecurityController, SecurityError, Telemetry}
  alias Sandbox.SecurityController.Operations

  @table __MODULE__

  @doc false
  def create_table do
    :ets.new(@table, [
      :set,
      :public,
      :named_table,
      read_concurrency: true,
      write_concurrency: true
    ])
  end

  @doc false
  def table, do: @table

  ## Entry points (called by the guard copies)

  @doc """
  A guarded static call `{m, f, a}` with `args`: its checks map the
  sandbox's own module names in its arguments (in every profile) and, unless
  the profile allows everything, enforce the profile.
  """
  @spec guarded(atom, mfa, [term]) :: term
  def guarded(id, mfa, [m, f, a])
      when mfa in [{:erlang, :make_fun, 3}, {Function, :capture, 3}] and is_atom(m) and
             is_atom(f) and is_integer(a) and a >= 0 and a <= 255 do
    profile = profile(id)

    case SecurityController.verdict(profile, mfa) do
      {:forbidden, class} -> violation!(id, mfa, class, nil)
      _ -> :ok
    end

    # The module mapped, the target checked before anything is made: a
    # guarded one gives a closure that makes the guarded call; any other
    # an external fun, which for a function not exported yet takes an
    # entry of the export table (Sandbox.ExportTable).
    case check_target(id, profile, map_module(id, m), f, List.duplicate(nil, a)) do
      {__MODULE__, :guarded, [^id, target, _]} ->
        guarded_fun(id, target)

      {m, f, _} ->
        case Sandbox.ExportTable.charge_fun(id, m, f, a) do
          :ok -> :erlang.make_fun(m, f, a)
          {:error, _} -> :erlang.error(:system_limit)
        end
    end
  end

  def guarded(id, {m, f, _a} = mfa, args) do
    profile = profile(id)

    args =
      case SecurityController.verdict(profile, mfa) do
        {:forbidden, class} ->
          violation!(id, mfa, class, nil)

        _allowed_or_guarded ->
          {_class, {:guarded, checks}} = Operations.classify(mfa)
          run_checks(checks, id, profile, mfa, args)
      end

    case args do
      # Code loading (:code_load): the module is created in the sandbox's
      # namespace instead (Sandbox.RuntimeCode), never in the host.
      {:code_load, args} -> Sandbox.RuntimeCode.perform(id, mfa, args)
      args -> apply(m, f, args)
    end
  end

  @doc """
  A dynamic `apply(m, f, args)` (the `apply` instruction, `erlang:apply/3`):
  `m` mapped to the sandbox's copy, then checked as a static call.
  """
  @spec apply(atom, module, atom, [term]) :: term
  def apply(id, m, f, args) do
    m = map_module(id, m)
    {m, f, args} = check_target(id, profile(id), m, f, args)
    Kernel.apply(m, f, args)
  end

  @doc "A dynamic call of `fun` with `args` (the `call_fun` instruction)."
  @spec call_fun(atom, fun, [term]) :: term
  def call_fun(id, fun, args) when is_function(fun) do
    case Function.info(fun, :type) do
      {:type, :external} ->
        {:module, m} = Function.info(fun, :module)
        {:name, f} = Function.info(fun, :name)
        __MODULE__.apply(id, m, f, args)

      _local ->
        Kernel.apply(fun, args)
    end
  end

  # Not a fun: let the VM raise its usual error.
  def call_fun(_id, other, args), do: Kernel.apply(other, args)

  @doc "The `send` instruction: `dest ! msg`; returns `msg`."
  @spec send(atom, term, term) :: term
  def send(id, dest, msg) do
    profile = profile(id)
    if guards?(profile), do: check_send(id, dest)
    :erlang.send(dest, msg)
  end

  ## Profiles and names

  @doc false
  def profile(id) do
    case :ets.lookup(@table, {:profile, id}) do
      [{_, profile}] -> profile
      # A copy whose sandbox is gone: nothing is allowed any more.
      [] -> SecurityController.profile(:high)
    end
  end

  defp guards?(profile), do: :all not in profile.allowed_operations

  @doc """
  The sandbox's copy of `module` when `module` is the original name of one
  of its modules, else `module`. Cached in the calling process.
  """
  @spec map_module(atom, module) :: module
  def map_module(id, module) when is_atom(module) do
    key = {__MODULE__, :module, id, module}

    case Process.get(key) do
      nil ->
        case relocated_name(id, module) do
          nil ->
            Process.put(key, {:host, nil})
            module

          name ->
            mapped_if_loaded(key, module, name)
        end

      # The sandbox's copy may be created later (Sandbox.RuntimeCode): a
      # name that mapped to the host is checked again each time (one BIF),
      # so that a negative entry never outlives the copy's creation.
      {:host, nil} ->
        module

      {:host, name} ->
        mapped_if_loaded(key, module, name)

      mapped ->
        mapped
    end
  end

  def map_module(_id, other), do: other

  defp mapped_if_loaded(key, module, name) do
    if :erlang.module_loaded(name) do
      Process.put(key, name)
      name
    else
      Process.put(key, {:host, name})
      module
    end
  end

  defp relocated_name(id, module) do
    {:ok, name} = Sandbox.Beam.relocated_name(Atom.to_string(id), module)
    name
  rescue
    _ -> nil
  catch
    _, _ -> nil
  end

  @doc "Whether `module` is one of sandbox `id`'s own (relocated) modules."
  @spec own_module?(atom, module) :: boolean
  def own_module?(id, module) when is_atom(module) do
    name = Atom.to_string(module)
    sid = Atom.to_string(id)

    String.starts_with?(name, "Elixir.Sandbox@" <> sid <> ".") or
      String.starts_with?(name, "sandbox@" <> sid <> "@")
  end

  def own_module?(_id, _module), do: false

  ## Checks

  # A call of `m.f(args)` about to be made (or handed to library code):
  # allowed as it is, or routed through `guarded/3` when guarded (its checks
  # then run when the call is made), or a violation. Not through the
  # sandbox's copy of the guard, which exports only the functions the
  # sandbox's code calls (see Sandbox.ChangeSet, "The guard's exports").
  # Already routed through `guarded/3` for this sandbox (a child spec or an
  # MFA checked once, then handed on): `guarded/3` checks it when it runs.
  # Another sandbox's id is not taken as such: its profile is not ours.
  defp check_target(id, _profile, __MODULE__, :guarded, [id, {m, f, a}, args] = wrapped)
       when is_atom(m) and is_atom(f) and is_list(args) and length(args) == a,
       do: {__MODULE__, :guarded, wrapped}

  defp check_target(id, profile, m, f, args) when is_atom(m) and is_atom(f) and is_list(args) do
    mfa = {m, f, length(args)}

    cond do
      own_module?(id, m) ->
        {m, f, args}

      true ->
        case SecurityController.verdict(profile, mfa) do
          {:forbidden, class} ->
            violation!(id, mfa, class, nil)

          _ ->
            case Operations.classify(mfa) do
              {_class, {:guarded, _}} -> {__MODULE__, :guarded, [id, mfa, args]}
              _ -> {m, f, args}
            end
        end
    end
  end

  # Not a module, function and list: let the VM raise its usual error.
  defp check_target(_id, _profile, m, f, args), do: {m, f, args}

  # Mapping checks (and process admission, a limit) run in every profile;
  # the others only when the profile does not allow everything.
  @always [:mfa, :fun, :module, :child_spec, :make_fun, :map_module, :spawn, :code_load]

  @doc """
  Whether a call of `{m, f, a}` has checks that run in every profile (the
  mappings of module names and process admission): such calls go through
  the guard even where the profile allows everything.
  """
  @spec always_checked?(mfa) :: boolean
  def always_checked?(mfa) do
    case Operations.classify(mfa) do
      {_class, {:guarded, checks}} -> Enum.any?(checks, &(check_kind(&1) in @always))
      _ -> false
    end
  end

  defp run_checks(checks, id, profile, mfa, args) do
    guarding = guards?(profile)

    Enum.reduce(checks, args, fn check, args ->
      if guarding or check_kind(check) in @always,
        do: check(check, id, profile, mfa, args),
        else: args
    end)
  end

  defp check_kind(check) when is_tuple(check), do: elem(check, 0)
  defp check_kind(check), do: check

  # An external fun `&m.f/a` about to be handed over or called: the module
  # mapped to the sandbox's copy; a guarded target becomes the guard's
  # function (its checks run when the fun is called); a forbidden one is a
  # violation.
  defp external_fun(id, profile, fun) do
    {:module, m} = Function.info(fun, :module)
    {:name, f} = Function.info(fun, :name)
    {:arity, a} = Function.info(fun, :arity)
    mapped = map_module(id, m)

    case check_target(id, profile, mapped, f, List.duplicate(nil, a)) do
      {__MODULE__, :guarded, [^id, mfa, _]} -> guarded_fun(id, mfa)
      {^m, ^f, _} -> fun
      {m2, f2, _} -> Function.capture(m2, f2, a)
    end
  end

  # A fun of the arity of guarded `mfa` that makes the guarded call.
  @max_guarded_arity for {_m, {_class, _default, exceptions}} <- Operations.table(),
                         {{_f, a}, {_c, {:guarded, _}}} <- exceptions,
                         reduce: 0,
                         do: (max -> max(a, max))

  for n <- 0..@max_guarded_arity do
    args = Macro.generate_arguments(n, __MODULE__)

    defp guarded_fun(id, {_m, _f, unquote(n)} = mfa),
      do: fn unquote_splicing(args) -> guarded(id, mfa, [unquote_splicing(args)]) end
  end

  defp check({:member, n}, id, _profile, mfa, args) do
    target = Enum.at(args, n - 1)
    unless member?(id, target), do: violation!(id, mfa, :basic_otp, {:not_a_member, target})
    args
  end

  defp check({:server, n}, id, _profile, mfa, args) do
    server = Enum.at(args, n - 1)

    case server_ok?(id, server) do
      true -> args
      false -> violation!(id, mfa, :basic_otp, {:not_a_member, server})
    end
  end

  defp check(:send, id, _profile, _mfa, [dest | _] = args) do
    check_send(id, dest)
    args
  end

  defp check({:mfa, mi, fi, ai}, id, profile, _mfa, args) do
    m = map_module(id, Enum.at(args, mi - 1))
    f = Enum.at(args, fi - 1)
    a = Enum.at(args, ai - 1)
    {m, f, a} = check_target(id, profile, m, f, a)
    args |> List.replace_at(mi - 1, m) |> List.replace_at(fi - 1, f) |> List.replace_at(ai - 1, a)
  end

  defp check({:fun, n}, id, profile, _mfa, args) do
    fun = Enum.at(args, n - 1)

    with true <- is_function(fun),
         {:type, :external} <- Function.info(fun, :type) do
      List.replace_at(args, n - 1, external_fun(id, profile, fun))
    else
      _ -> args
    end
  end

  defp check({:module, n}, id, profile, mfa, args) do
    module = map_module(id, Enum.at(args, n - 1))

    cond do
      not guards?(profile) or not is_atom(module) or own_module?(id, module) -> :ok
      SecurityController.verdict(profile, {module, :init, 1}) == :allowed -> :ok
      true -> violation!(id, mfa, :basic_otp, {:callback_module, module})
    end

    List.replace_at(args, n - 1, module)
  end

  defp check({:map_module, n}, id, _profile, _mfa, args),
    do: List.update_at(args, n - 1, &map_module(id, &1))

  defp check({:child_spec, n}, id, profile, mfa, args) do
    specs = Enum.at(args, n - 1)
    List.replace_at(args, n - 1, child_specs(specs, id, profile, mfa))
  end

  defp check({:ets, n}, id, _profile, mfa, args) do
    table = Enum.at(args, n - 1)

    case :ets.info(table, :owner) do
      :undefined -> :ok
      owner -> unless member?(id, owner), do: violation!(id, mfa, :basic_otp, {:table, table})
    end

    args
  end

  defp check(:ets_new, id, _profile, mfa, [_name, opts] = args) do
    for {:heir, pid, _} <- List.wrap(opts), not member?(id, pid) do
      violation!(id, mfa, :basic_otp, {:heir, pid})
    end

    args
  end

  defp check(:new_atom, id, _profile, mfa, [text | _] = args) do
    unless existing_atom?(text), do: spend_atoms(id, mfa, 1)
    args
  end

  defp check(:binary_to_term, id, _profile, mfa, [bin | _] = args) when is_binary(bin) do
    case Sandbox.SafeTerm.new_atoms(bin, :infinity) do
      {:ok, new} when new != [] -> spend_atoms(id, mfa, length(new))
      _ -> :ok
    end

    if funs_inside?(bin), do: violation!(id, mfa, :basic_otp, :fun_in_term)
    args
  end

  defp check({:write, n}, id, _profile, mfa, args) do
    max = limit(id, :max_file_size)
    size = args |> Enum.at(n - 1) |> data_size()

    if is_integer(max) and size > max,
      do: violation!(id, mfa, :file_write, {:file_size, size, max})

    args
  end

  defp check({:open, n}, id, profile, mfa, args) do
    modes = List.wrap(Enum.at(args, n - 1))

    writes? =
      Enum.any?(
        modes,
        &(&1 in [:write, :append, :exclusive, :read_write] or match?({:write, _}, &1))
      )

    if writes? and :file_write not in profile.allowed_operations and guards?(profile),
      do: violation!(id, mfa, :file_write, {:open_modes, modes})

    args
  end

  defp check(:group_leader, id, _profile, mfa, [gl, pid] = args) do
    unless member?(id, pid) and sandbox_group_leader?(id, gl),
      do: violation!(id, mfa, :basic_otp, {:group_leader, gl, pid})

    args
  end

  # Admission: a spawn over `max_processes` fails as it would in a VM
  # whose process table is full (`system_limit`), and the sandbox is
  # stopped as for any breach of the limit (`{:limit_exceeded,
  # :max_processes}`): a limit, not a security violation. A sandbox that
  # is not running spawns nothing.
  defp check(:spawn, id, _profile, _mfa, args) do
    sid = Atom.to_string(id)

    case Sandbox.ResourceMonitor.admit_spawn(sid) do
      :ok ->
        args

      {:error, {:limit_exceeded, _}} ->
        Sandbox.ResourceMonitor.refused(sid)
        :erlang.error(:system_limit)

      {:error, :not_found} ->
        :erlang.error(:system_limit)
    end
  end

  # Code loading: performed by Sandbox.RuntimeCode in place of the call
  # (see guarded/3), once the other checks have passed.
  defp check(:code_load, _id, _profile, _mfa, args), do: {:code_load, args}

  defp check(_check, _id, _profile, _mfa, args), do: args

  defp check_send(id, dest) do
    case dest do
      pid when is_pid(pid) ->
        :ok

      name when is_atom(name) ->
        unless name_ok?(id, name),
          do: violation!(id, {:send, name}, :basic_otp, {:not_a_member, name})

      other ->
        violation!(id, {:send, other}, :basic_otp, {:not_a_member, other})
    end
  end

  # A server: any pid, or a name registered by one of the sandbox's
  # processes (an unregistered name fails on its own).
  defp server_ok?(_id, pid) when is_pid(pid), do: true
  defp server_ok?(id, name) when is_atom(name), do: name_ok?(id, name)
  defp server_ok?(_id, _other), do: false

  defp name_ok?(id, name) do
    case :erlang.whereis(name) do
      :undefined -> true
      pid when is_pid(pid) -> member?(id, pid)
      _port -> false
    end
  end

  @doc "Whether `target` (a pid, port or registered name) is a process of sandbox `id`."
  @spec member?(atom, term) :: boolean
  # A pid of another node is not one of the sandbox's processes.
  def member?(_id, pid) when is_pid(pid) and node(pid) != node(), do: false

  def member?(id, pid) when is_pid(pid) do
    case Process.info(pid, :group_leader) do
      {:group_leader, gl} -> sandbox_group_leader?(id, gl)
      nil -> false
    end
  end

  def member?(id, name) when is_atom(name) do
    case :erlang.whereis(name) do
      pid when is_pid(pid) -> member?(id, pid)
      _undefined_or_port -> false
    end
  end

  def member?(_id, _other), do: false

  defp sandbox_group_leader?(id, gl) when is_pid(gl) do
    sid = Atom.to_string(id)

    case :ets.lookup(GroupLeader, gl) do
      [{^gl, ^sid, _}] -> true
      _ -> false
    end
  end

  defp sandbox_group_leader?(_id, _gl), do: false

  defp child_specs(specs, id, profile, mfa) when is_list(specs),
    do: Enum.map(specs, &child_spec(&1, id, profile, mfa))

  defp child_specs({flags, specs}, id, profile, mfa) when is_list(specs),
    do: {flags, child_specs(specs, id, profile, mfa)}

  defp child_specs(spec, id, profile, mfa), do: child_spec(spec, id, profile, mfa)

  defp child_spec(%{start: {m, f, a}} = spec, id, profile, _mfa) do
    mapped = map_module(id, m)

    case check_target(id, profile, mapped, f, a) do
      {^mapped, _f, _a} = start ->
        %{spec | start: start}

      # Routed through the guard: the child's modules stay what they were.
      start ->
        spec |> Map.put_new(:modules, [mapped]) |> Map.put(:start, start)
    end
  end

  defp child_spec({module, arg}, id, profile, mfa) when is_atom(module),
    do: module_child_spec(module, arg, {module, arg}, id, profile, mfa)

  defp child_spec(module, id, profile, mfa) when is_atom(module),
    do: module_child_spec(module, [], module, id, profile, mfa)

  defp child_spec({child_id, {m, f, a}, restart, shutdown, type, mods}, id, profile, _mfa) do
    {m, f, a} = check_target(id, profile, map_module(id, m), f, a)
    {child_id, {m, f, a}, restart, shutdown, type, mods}
  end

  defp child_spec(other, _id, _profile, _mfa), do: other

  # `{module, arg}` (or `module`, `arg` being `[]`): the supervisor would
  # call `module.child_spec(arg)` and start what it returns, from host code
  # where no guard sees the start function. So the spec is expanded here, as
  # the supervisor would, and its start checked. A host module must have an
  # allowed `child_spec/1` (under a profile that checks); a module without
  # `child_spec/1` is left as it is, for the supervisor's own error.
  defp module_child_spec(module, arg, given, id, profile, mfa) do
    mapped = map_module(id, module)

    cond do
      not is_atom(mapped) or not exports_child_spec?(mapped) ->
        remap(given, mapped)

      own_module?(id, mapped) or not guards?(profile) ->
        child_spec(mapped.child_spec(arg), id, profile, mfa)

      SecurityController.verdict(profile, {mapped, :child_spec, 1}) == :allowed ->
        child_spec(mapped.child_spec(arg), id, profile, mfa)

      true ->
        violation!(id, mfa, :basic_otp, {:callback_module, module})
    end
  end

  defp remap({_module, arg}, mapped), do: {mapped, arg}
  defp remap(_module, mapped), do: mapped

  defp exports_child_spec?(module),
    do: Code.ensure_loaded?(module) and function_exported?(module, :child_spec, 1)

  defp existing_atom?(text) when is_binary(text) do
    _ = String.to_existing_atom(text)
    true
  rescue
    _ -> false
  end

  defp existing_atom?(text) when is_list(text) do
    _ = List.to_existing_atom(text)
    true
  rescue
    _ -> false
  end

  defp existing_atom?(_), do: true

  @doc false
  # Spends `n` of sandbox `id`'s atom budget (`:max_atoms`, default 10,000)
  # for a call of `mfa`: a violation past it.
  @spec spend_atoms(atom, mfa, non_neg_integer) :: :ok
  def spend_atoms(id, mfa, n) do
    budget = atom_budget(id)
    used = :ets.update_counter(@table, {:atoms, id}, n, {{:atoms, id}, 0})
    if used > budget, do: violation!(id, mfa, :basic_otp, {:atom_budget, budget})
    :ok
  end

  @doc false
  # What is left of sandbox `id`'s atom budget.
  @spec atoms_left(atom) :: integer
  def atoms_left(id) do
    used =
      case :ets.lookup(@table, {:atoms, id}) do
        [{_, n}] -> n
        [] -> 0
      end

    atom_budget(id) - used
  end

  defp atom_budget(id), do: limit(id, :max_atoms) || 10_000

  # Any fun in the term (external or local), by a walk without decoding.
  defp funs_inside?(bin) do
    match?({:error, {:unsafe_term, :fun}}, Sandbox.SafeTerm.new_atoms(bin, :infinity))
  end

  defp data_size(data) when is_binary(data), do: byte_size(data)

  defp data_size(data) do
    IO.iodata_length(data)
  rescue
    _ -> 0
  end

  defp limit(id, key) do
    case :ets.lookup(@table, {:limits, id}) do
      [{_, limits}] -> Map.get(limits, key)
      [] -> nil
    end
  end

  ## Violations

  @doc """
  A violation in sandbox `id`: emits `[:sandbox, :security, :violation]`,
  appends an audit line, stops the sandbox under `:high`, and raises
  `Sandbox.SecurityError` in the caller.
  """
  @spec violation!(atom, term, atom, term) :: no_return
  def violation!(id, target, class, reason) do
    sid = Atom.to_string(id)
    target = original_target(id, target)
    detail = %{target: target, class: class, reason: reason, pid: self()}
    Telemetry.emit(:security, :violation, %{count: 1}, Map.put(detail, :sandbox_id, sid))
    SecurityController.violation(sid, detail)
    raise SecurityError, sandbox_id: sid, target: target, class: class, reason: reason
  end

  # Targets are reported under the names the sandbox's source uses.
  defp original_target(id, {m, f, a}), do: {original(id, m), f, a}
  defp original_target(_id, other), do: other

  defp original(id, m) do
    prefix = "Elixir.Sandbox@" <> Atom.to_string(id) <> "."
    name = Atom.to_string(m)

    if String.starts_with?(name, prefix),
      do: String.to_atom("Elixir." <> String.replace_prefix(name, prefix, "")),
      else: m
  end

  @doc false
  # The classification, for the guard template.
  def guarded_mfas do
    for {m, {_class, _default, exceptions}} <- Operations.table(),
        {{f, a}, {_c, {:guarded, _}}} <- exceptions,
        do: {m, f, a}
  end

  @doc "The name of the guard function that stands for `{m, f, a}`."
  @spec guard_name(mfa) :: atom
  def guard_name({m, f, _a}), do: String.to_atom(inspect(m) <> "." <> Atom.to_string(f))
end
