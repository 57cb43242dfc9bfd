//! Setting and reading config values at every scope.

use super::*;

impl Sockets {
    // ----- config values ------------------------------------------------------------------

    /// Sets (or with `None` clears) a config value at a scope. Connection values set on a
    /// live connection, or above it, take effect at once.
    pub fn set_config_value(
        &self,
        value: ConfigValue,
        target: ConfigTarget,
        data: Option<ConfigData>,
    ) -> Result<(), ConfigError> {
        config::check_scope(value, target.scope())?;
        let mut st = self.state();
        match target {
            ConfigTarget::Global => st.world.set_config(value, data)?,
            ConfigTarget::Interface => st.interface.set(value, data)?,
            ConfigTarget::ListenSocket(h) => {
                st.reg
                    .listens
                    .get_mut(&h)
                    .ok_or(ConfigError::BadScopeObject)?
                    .config
                    .set(value, data)?;
            }
            ConfigTarget::Connection(h) => {
                let c = st
                    .reg
                    .conns
                    .get_mut(&h)
                    .ok_or(ConfigError::BadScopeObject)?;
                c.config.set(value, data)?;
                if value == ConfigValue::ConnectionUserData {
                    if let Some(d) = c.config.get(value).and_then(ConfigData::as_i64) {
                        c.hot.set_user_data(d);
                    }
                }
            }
        }
        st.reapply_config();
        Ok(())
    }

    /// Reads a config value as it applies at a scope: `Ok` when set there, `OkInherited`
    /// when it comes from a wider scope or the default.
    pub fn get_config_value(
        &self,
        value: ConfigValue,
        target: ConfigTarget,
    ) -> Result<(ConfigData, GetResult), ConfigError> {
        let st = self.state();
        let global = lock(&st.world.config);
        let chain: Vec<&ConfigStore> = match target {
            ConfigTarget::Global => vec![&global],
            ConfigTarget::Interface => vec![&st.interface, &global],
            ConfigTarget::ListenSocket(h) => {
                let l = st.reg.listens.get(&h).ok_or(ConfigError::BadScopeObject)?;
                vec![&l.config, &st.interface, &global]
            }
            ConfigTarget::Connection(h) => {
                let c = st.reg.conns.get(&h).ok_or(ConfigError::BadScopeObject)?;
                let mut v = vec![&c.config];
                if let Some(l) = c.listen.and_then(|l| st.reg.listens.get(&l)) {
                    v.push(&l.config);
                }
                v.push(&st.interface);
                v.push(&global);
                v
            }
        };
        if let ConfigTarget::Connection(h) = target {
            if value == ConfigValue::ConnectionUserData {
                let c = &st.reg.conns[&h];
                return Ok((ConfigData::Int64(c.hot.user_data()), GetResult::Ok));
            }
        }
        Ok(resolve(value, &chain))
    }
}
